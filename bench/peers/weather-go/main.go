// The weather service of the protocol shared with plaza's apps/weather (bench/peers/README.md,
// "Weather service peers") written the way a Go programmer would write it today: net/http,
// database/sql with github.com/mattn/go-sqlite3, encoding/json. It is a benchmark peer of
// plaza's service and follows the same protocol (endpoints, JSON shapes, status codes,
// schema, seeding, staleness, group commit, command line):
//
//	weather-go [serve] --listen 127.0.0.1:8080 --db weather.db [--workers N]
//	                   [--forecast-ttl-ms 1000] [--refresh-ms 1000] [--batch-linger-ms 0]
//
// A --db that is a PostgreSQL URL (postgresql://..., postgres://..., or "pg:" and a
// key=value connection string) selects the PostgreSQL back end (pg.go: lib/pq, the schema,
// statements and lock choices of plaza's PostgreSQL back end for one replica); anything
// else is an SQLite file.
//
// Locks, as the protocol assigns them:
//   - `current` of a city is behind a sync.Mutex (the data lock): only copies inside.
//   - `forecast` of a city is behind another sync.Mutex (the logic lock), held across the
//     database round trip of a refresh. Go has one kind of mutex; a goroutine that waits
//     for it parks and its thread runs other goroutines, which is what an async lock gives
//     in the other two services. The query itself is a cgo call: the goroutine keeps its
//     thread during it, and the runtime hands the processor to another thread. With
//     PostgreSQL the query is a network round trip on Go's netpoller, and the refresh also
//     takes the city's distributed lock inside the mutex, as plaza's service does.
//   - One writer goroutine commits the readings. A handler sends its readings with a done
//     channel; the writer commits whatever is queued in one transaction (at most 1000
//     readings; with --batch-linger-ms it waits that long after taking the first for
//     more, as plaza's service does) and answers every done channel of the batch after
//     the commit, so a 200 to a POST means its readings are in the database file.
//   - No connection checkpoints inside a commit (wal_autocheckpoint=0, set on each by the
//     driver's connect hook); a checkpointer goroutine does, every 100 ms when something
//     was committed since its last run (PROTOCOL.md, Checkpoints), as plaza's service does.
//
// Shutdown on SIGTERM or SIGINT: http.Server.Shutdown stops accepting, closes idle
// connections and waits for the requests in flight; then the writer's channel is closed,
// the writer commits what it holds, and the process exits 0.
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	sqlite3 "github.com/mattn/go-sqlite3"
)

// The driver the service opens its SQLite database with: go-sqlite3 with a connect hook
// that turns off the checkpoint inside commits on every connection (the DSN has no
// parameter for it) and bounds the WAL file kept after it starts over.
func init() {
	sql.Register("sqlite3_weather", &sqlite3.SQLiteDriver{ConnectHook: func(c *sqlite3.SQLiteConn) error {
		_, err := c.Exec("PRAGMA wal_autocheckpoint=0; PRAGMA journal_size_limit=67108864;", nil)
		return err
	}})
}

const (
	numCities      = 64
	seedReadings   = 32
	horizonMs      = 600000.0 // the forecast looks 10 minutes ahead
	maxPostReading = 1000
	batchReadings  = 1000
	maxBody        = 1 << 20
	requestTimeout = 10 * time.Second
	writerQueue    = 1024 // requests, not readings

	// The checkpointer's period, the WAL size in pages from which it tries to make the
	// WAL start over, and the size from which it waits to (PROTOCOL.md, Checkpoints).
	checkpointEvery  = 100 * time.Millisecond
	walRestartFrames = 4096
	walForceFrames   = 65536

	// net/http lets a header block reach MaxHeaderBytes plus 4096 bytes of slack before it
	// answers 431; 4096 + 4096 is the protocol's 8 KiB.
	maxHeaderBytes = 8*1024 - 4096

	schema = `CREATE TABLE IF NOT EXISTS cities(name TEXT PRIMARY KEY, base REAL NOT NULL);
CREATE TABLE IF NOT EXISTS readings(id INTEGER PRIMARY KEY, city TEXT NOT NULL,
    temperature REAL NOT NULL, time INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS readings_city_time ON readings(city, time);`
	recentSQL = `SELECT temperature, time FROM readings WHERE city = ? ORDER BY time DESC LIMIT 32`
	insertSQL = `INSERT INTO readings(city, temperature, time) VALUES (?, ?, ?)`
)

func nowMs() int64 { return time.Now().UnixMilli() }

// current is the latest reading of a city (newest by reading time) and how many readings
// arrived since start.
type current struct {
	temperature float64
	time        int64
	sinceStart  uint64
}

// forecast: computedAt 0 means never computed (always stale).
type forecast struct {
	temperature float64
	computedAt  int64
	basedOn     int
	token       uint64 // PostgreSQL: the fencing token it was written with (0: none yet)
}

type city struct {
	name string
	base float64

	curMu sync.Mutex // data lock: guards cur
	cur   current

	fcMu sync.Mutex // logic lock: guards fc, held across a refresh's query
	fc   forecast
}

type row struct {
	city        *city
	temperature float64
	time        int64
}

// job is one POST's readings on their way to the writer; done receives the commit's error.
type job struct {
	rows []row
	done chan error
}

type app struct {
	cities  []*city
	index   map[string]*city
	db      *sql.DB
	pg      *pgStore // the PostgreSQL back end, when --db names one (then db is nil)
	recent  *sql.Stmt
	insert  *sql.Stmt
	writes  chan job
	linger  time.Duration
	ttlMs   int64
	readOK  atomic.Bool // outcome of the latest read and the latest commit: /healthz
	writeOK atomic.Bool
	commits atomic.Uint64 // SQLite batches committed, for the checkpointer
	metrics metrics
}

// ---------------------------------------------------------------------------------------
// Metrics: the log-linear latency histogram of bench/hist.h (one bucket per ns below 256,
// then 128 buckets per power of two), with atomic counters so recording takes no lock.

const (
	histSubBits = 7
	histSub     = 1 << histSubBits
	histMaxBits = 40
	histBuckets = 2*histSub + (histMaxBits-histSubBits-1)*histSub
)

func histIndex(v uint64) int {
	if v >= 1<<histMaxBits {
		v = 1<<histMaxBits - 1
	}
	if v < 2*histSub {
		return int(v)
	}
	msb := 63
	for v>>uint(msb) == 0 {
		msb--
	}
	shift := msb - histSubBits
	mant := int(v >> uint(shift))
	return 2*histSub + (shift-1)*histSub + (mant - histSub)
}

func histValue(i int) float64 {
	if i < 2*histSub {
		return float64(i)
	}
	shift := (i-2*histSub)/histSub + 1
	mant := uint64((i-2*histSub)%histSub + histSub)
	return float64(mant<<uint(shift)) + float64(uint64(1)<<uint(shift))/2
}

type hist struct {
	buckets [histBuckets]atomic.Uint64
	maxNs   atomic.Uint64
}

func (h *hist) add(ns uint64) {
	h.buckets[histIndex(ns)].Add(1)
	for {
		m := h.maxNs.Load()
		if ns <= m || h.maxNs.CompareAndSwap(m, ns) {
			return
		}
	}
}

type endpointStats struct {
	Count  uint64  `json:"count"`
	P50us  float64 `json:"p50_us"`
	P99us  float64 `json:"p99_us"`
	P999us float64 `json:"p999_us"`
	MaxUs  float64 `json:"max_us"`
}

// summary: count and p50/p99/p99.9 in µs by bench/hist.h's rule (sorted index
// min(n-1, n*permille/1000), bucket midpoint), from one snapshot of the buckets.
func (h *hist) summary() endpointStats {
	var counts [histBuckets]uint64
	var n uint64
	for i := range counts {
		counts[i] = h.buckets[i].Load()
		n += counts[i]
	}
	maxUs := float64(h.maxNs.Load()) / 1000
	pct := func(permille uint64) float64 {
		if n == 0 {
			return 0
		}
		rank := n * permille / 1000
		if rank > n-1 {
			rank = n - 1
		}
		var seen uint64
		for i, c := range counts {
			seen += c
			if seen > rank {
				// A bucket's midpoint can lie above the largest value recorded in it.
				v := histValue(i) / 1000
				if v > maxUs {
					v = maxUs
				}
				return v
			}
		}
		return 0
	}
	return endpointStats{Count: n, P50us: pct(500), P99us: pct(990), P999us: pct(999), MaxUs: maxUs}
}

const (
	epPostReadings = iota
	epGetWeather
	epHealthz
	epMetrics
	epNone
)

type metrics struct {
	endpoints [4]hist
	status    [3]atomic.Uint64 // 2xx, 4xx, 5xx
}

// ---------------------------------------------------------------------------------------
// Database

func openDB(path string) (*sql.DB, error) {
	// go-sqlite3 runs these PRAGMAs on every connection it opens; _txlock=immediate makes
	// the writer's BEGIN take the write lock at once.
	dsn := "file:" + path + "?_journal_mode=WAL&_synchronous=NORMAL&_busy_timeout=5000&_txlock=immediate"
	db, err := sql.Open("sqlite3_weather", dsn)
	if err != nil {
		return nil, err
	}
	// database/sql keeps only 2 idle connections by default: refreshes running at once
	// would open and close connections all the time.
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(16)
	if _, err := db.Exec(schema); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// seed fills an empty `cities` in one transaction: city i has base ((i*7) % 40) - 5 and 32
// readings one minute apart ending at start.
func seed(db *sql.DB, start int64) error {
	tx, err := db.Begin()
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var have int
	if err := tx.QueryRow(`SELECT count(*) FROM cities`).Scan(&have); err != nil {
		return err
	}
	if have == 0 {
		for i := int64(0); i < numCities; i++ {
			name := fmt.Sprintf("city%02d", i)
			base := float64((i*7)%40) - 5.0
			if _, err := tx.Exec(`INSERT INTO cities(name, base) VALUES (?, ?)`, name, base); err != nil {
				return err
			}
			for k := int64(0); k < seedReadings; k++ {
				t := base + float64(((k*13+i)%11)-5)*0.1
				if _, err := tx.Exec(insertSQL, name, t, start-(seedReadings-1-k)*60000); err != nil {
					return err
				}
			}
		}
	}
	return tx.Commit()
}

func loadCities(db *sql.DB) ([]*city, error) {
	rows, err := db.Query(`SELECT name, base FROM cities ORDER BY name`)
	if err != nil {
		return nil, err
	}
	var cities []*city
	for rows.Next() {
		c := &city{}
		if err := rows.Scan(&c.name, &c.base); err != nil {
			rows.Close()
			return nil, err
		}
		cities = append(cities, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for _, c := range cities {
		err := db.QueryRow(`SELECT temperature, time FROM readings WHERE city = ? ORDER BY time DESC LIMIT 1`, c.name).
			Scan(&c.cur.temperature, &c.cur.time)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return nil, err
		}
	}
	return cities, nil
}

// ---------------------------------------------------------------------------------------
// Forecasts

type sample struct {
	temperature float64
	time        int64
}

// nextForecast: 0.7 * mean + 0.3 * previous (the mean alone the first time), plus the
// least-squares slope (degrees per ms) times 10 minutes. Times are taken relative to their
// mean so the sums stay exact in a float64. No readings: the previous value stays.
func nextForecast(previous float64, first bool, recent []sample) float64 {
	if len(recent) == 0 {
		return previous
	}
	n := float64(len(recent))
	var meanT, meanX float64
	for _, s := range recent {
		meanT += s.temperature
		meanX += float64(s.time)
	}
	meanT /= n
	meanX /= n
	var sxy, sxx float64
	for _, s := range recent {
		dx := float64(s.time) - meanX
		sxy += dx * (s.temperature - meanT)
		sxx += dx * dx
	}
	slope := 0.0
	if len(recent) >= 2 && sxx != 0 {
		slope = sxy / sxx
	}
	smooth := meanT
	if !first {
		smooth = 0.7*meanT + 0.3*previous
	}
	return smooth + slope*horizonMs
}

// refresh recomputes c.fc; the caller holds c.fcMu across it, query included, which makes
// concurrent refreshes of one city a single flight.
//
// With PostgreSQL the refresh goes through the city's distributed lock and the stored
// forecast (pg.go); one stored by another process less than freshMs ago is adopted.
func (a *app) refresh(c *city, freshMs int64) error {
	if a.pg != nil {
		err := a.pg.refresh(c, freshMs)
		a.readOK.Store(err == nil)
		return err
	}
	rows, err := a.recent.Query(c.name)
	if err != nil {
		a.readOK.Store(false)
		return err
	}
	recent := make([]sample, 0, 32)
	for rows.Next() {
		var s sample
		if err := rows.Scan(&s.temperature, &s.time); err != nil {
			rows.Close()
			a.readOK.Store(false)
			return err
		}
		recent = append(recent, s)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		a.readOK.Store(false)
		return err
	}
	a.readOK.Store(true)
	c.fc.temperature = nextForecast(c.fc.temperature, c.fc.computedAt == 0, recent)
	c.fc.computedAt = nowMs()
	c.fc.basedOn = len(recent)
	return nil
}

func (a *app) refresher(ctx context.Context, every time.Duration) {
	// As plaza's refresher: a forecast another process stored in the last half period is
	// adopted.
	fresh := every.Milliseconds() / 2
	if fresh > a.ttlMs {
		fresh = a.ttlMs
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		for _, c := range a.cities {
			c.fcMu.Lock()
			if err := a.refresh(c, fresh); err != nil {
				log.Printf("reading %s: %v", c.name, err)
			}
			c.fcMu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// ---------------------------------------------------------------------------------------
// Writer

func (a *app) commit(jobs []job) error {
	if a.pg != nil {
		return a.pg.insertBatch(jobs)
	}
	tx, err := a.db.Begin()
	if err != nil {
		return err
	}
	defer tx.Rollback()
	insert := tx.Stmt(a.insert)
	for _, j := range jobs {
		for _, r := range j.rows {
			if _, err := insert.Exec(r.city.name, r.temperature, r.time); err != nil {
				return err
			}
		}
	}
	return tx.Commit()
}

// writer is the group-commit loop. A batch starts with the first queued job and takes more
// until it would pass 1000 readings (the job that does not fit opens the next batch) or
// nothing more is queued; with a linger it waits until a.linger after it took the first
// job instead. Every job of the batch gets the commit's outcome. It returns once the
// channel is closed and everything in it is committed.
func (a *app) writer(stopped chan<- struct{}) {
	defer close(stopped)
	var carry *job
	open := true
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	// next returns the next job of the batch; more false when the batch is complete (or
	// the channel closed: open false).
	next := func() (j job, more bool) {
		if a.linger == 0 {
			select {
			case j, open = <-a.writes:
				return j, open
			default:
				return j, false
			}
		}
		select {
		case j, open = <-a.writes:
			return j, open
		case <-timer.C:
			return j, false
		}
	}
	for {
		var first job
		if carry != nil {
			first, carry = *carry, nil
		} else if !open {
			return
		} else if j, ok := <-a.writes; ok {
			first = j
		} else {
			return
		}
		batch := []job{first}
		readings := len(first.rows)
		if a.linger > 0 {
			timer.Reset(a.linger)
		}
		for open && readings < batchReadings {
			j, more := next()
			if !more {
				break
			}
			if readings+len(j.rows) > batchReadings {
				carry = &j
				break
			}
			readings += len(j.rows)
			batch = append(batch, j)
		}
		if a.linger > 0 && !timer.Stop() {
			select { // drain a fire that raced with the stop
			case <-timer.C:
			default:
			}
		}
		err := a.commit(batch)
		if err != nil {
			log.Printf("commit of %d readings failed: %v", readings, err)
		}
		a.writeOK.Store(err == nil)
		if err == nil {
			a.commits.Add(1)
		}
		for _, j := range batch {
			j.done <- err
		}
	}
}

// checkpoint is one round of the checkpointer (PROTOCOL.md, Checkpoints) on its own
// connection c, whose busy timeout is 0: a PASSIVE checkpoint (copies what it can without
// taking a lock the writer or a reader waits for); from walRestartFrames on, a second one
// (what came in during the first) and a RESTART one that does not wait unless the WAL has
// reached walForceFrames.
func checkpoint(ctx context.Context, c *sql.Conn) error {
	var busy, frames, copied int64
	run := func(mode string) error {
		return c.QueryRowContext(ctx, "PRAGMA wal_checkpoint("+mode+")").Scan(&busy, &frames, &copied)
	}
	if err := run("PASSIVE"); err != nil || busy != 0 || frames < walRestartFrames {
		return err
	}
	if err := run("PASSIVE"); err != nil || busy != 0 {
		return err
	}
	if frames < walForceFrames {
		return run("RESTART")
	}
	if _, err := c.ExecContext(ctx, "PRAGMA busy_timeout=5000"); err != nil {
		return err
	}
	err := run("RESTART")
	if _, e := c.ExecContext(ctx, "PRAGMA busy_timeout=0"); err == nil {
		err = e
	}
	return err
}

// checkpointer (SQLite only) runs checkpoint every checkpointEvery, on a connection of its
// own, if the writer committed since its last round, until ctx is done.
func (a *app) checkpointer(ctx context.Context) {
	c, err := a.db.Conn(ctx)
	if err == nil {
		_, err = c.ExecContext(ctx, "PRAGMA busy_timeout=0")
	}
	if err != nil {
		log.Printf("checkpointer: %v", err)
		return
	}
	defer func() {
		// Back to the pool as the others are.
		c.ExecContext(context.Background(), "PRAGMA busy_timeout=5000")
		c.Close()
	}()
	tick := time.NewTicker(checkpointEvery)
	defer tick.Stop()
	var seen uint64
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		n := a.commits.Load()
		if n == seen {
			continue
		}
		seen = n
		if err := checkpoint(ctx, c); err != nil && ctx.Err() == nil {
			if !failing {
				log.Printf("checkpoint failed (the WAL grows until one succeeds): %v", err)
			}
			failing = true
		} else {
			failing = false
		}
	}
}

// ---------------------------------------------------------------------------------------
// Handlers

// reply is what a handler answers; serve writes it and records the metrics.
type reply struct {
	status int
	body   any
	allow  string
}

func errorReply(status int, reason string) reply {
	return reply{status: status, body: map[string]string{"error": reason}}
}

type readingIn struct {
	City        *string  `json:"city"`
	Temperature *float64 `json:"temperature"`
	Time        *int64   `json:"time"`
}

type postIn struct {
	Readings []readingIn `json:"readings"`
}

func (a *app) postReadings(r *http.Request) reply {
	_, hasLength := r.Header["Content-Length"]
	if !hasLength && len(r.TransferEncoding) == 0 {
		return errorReply(http.StatusLengthRequired, "Content-Length required")
	}
	if r.ContentLength > maxBody {
		return errorReply(http.StatusRequestEntityTooLarge, "body over 1 MiB")
	}
	// Server.ReadTimeout bounds the reading of the whole request from its first byte, so a
	// slow body ends in a timeout error here.
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return errorReply(http.StatusRequestTimeout, "request not complete within 10 s")
	case err != nil:
		return errorReply(http.StatusBadRequest, "malformed request body")
	case len(body) > maxBody:
		return errorReply(http.StatusRequestEntityTooLarge, "body over 1 MiB")
	}
	var in postIn
	if err := json.Unmarshal(body, &in); err != nil {
		return errorReply(http.StatusBadRequest, "malformed JSON: "+err.Error())
	}
	if len(in.Readings) == 0 || len(in.Readings) > maxPostReading {
		return errorReply(http.StatusBadRequest, "readings: 1 to 1000 expected")
	}
	// Check everything and resolve every city before touching anything: an unknown city
	// rejects the whole request.
	now := nowMs()
	rows := make([]row, 0, len(in.Readings))
	for _, rd := range in.Readings {
		if rd.City == nil || rd.Temperature == nil {
			return errorReply(http.StatusBadRequest, "a reading needs city and temperature")
		}
		c, ok := a.index[*rd.City]
		if !ok {
			return errorReply(http.StatusNotFound, "unknown city")
		}
		t := now
		if rd.Time != nil {
			t = *rd.Time
		}
		rows = append(rows, row{city: c, temperature: *rd.Temperature, time: t})
	}
	for _, rw := range rows {
		c := rw.city
		c.curMu.Lock()
		if rw.time >= c.cur.time {
			c.cur.temperature = rw.temperature
			c.cur.time = rw.time
		}
		c.cur.sinceStart++
		c.curMu.Unlock()
	}
	done := make(chan error, 1)
	a.writes <- job{rows: rows, done: done}
	if err := <-done; err != nil {
		return errorReply(http.StatusServiceUnavailable, "database unavailable")
	}
	return reply{status: http.StatusOK, body: map[string]int{"accepted": len(rows)}}
}

type forecastOut struct {
	Temperature float64 `json:"temperature"`
	ComputedAt  int64   `json:"computed_at"`
	BasedOn     int     `json:"based_on"`
}

type weatherOut struct {
	City        string      `json:"city"`
	Temperature float64     `json:"temperature"`
	Updated     int64       `json:"updated"`
	Forecast    forecastOut `json:"forecast"`
}

// getWeather takes the forecast lock on every GET and tests staleness under it: a GET that
// waited behind a refresh finds the forecast fresh and does not query again.
func (a *app) getWeather(name string) reply {
	c, ok := a.index[name]
	if !ok {
		return errorReply(http.StatusNotFound, "unknown city")
	}
	c.fcMu.Lock()
	if c.fc.computedAt == 0 || nowMs()-c.fc.computedAt > a.ttlMs {
		if err := a.refresh(c, a.ttlMs); err != nil {
			c.fcMu.Unlock()
			log.Printf("reading %s: %v", c.name, err)
			return errorReply(http.StatusServiceUnavailable, "database unavailable")
		}
	}
	fc := forecastOut{Temperature: c.fc.temperature, ComputedAt: c.fc.computedAt, BasedOn: c.fc.basedOn}
	c.fcMu.Unlock()
	c.curMu.Lock()
	out := weatherOut{City: c.name, Temperature: c.cur.temperature, Updated: c.cur.time, Forecast: fc}
	c.curMu.Unlock()
	return reply{status: http.StatusOK, body: out}
}

func (a *app) healthz() reply {
	if a.readOK.Load() && a.writeOK.Load() {
		return reply{status: http.StatusOK, body: map[string]string{"status": "ok"}}
	}
	return reply{status: http.StatusServiceUnavailable, body: map[string]string{"status": "unavailable"}}
}

type metricsOut struct {
	PostReadings endpointStats     `json:"post_readings"`
	GetWeather   endpointStats     `json:"get_weather"`
	Healthz      endpointStats     `json:"healthz"`
	Metrics      endpointStats     `json:"metrics"`
	Status       map[string]uint64 `json:"status"`
}

func (a *app) metricsReply() reply {
	m := &a.metrics
	return reply{status: http.StatusOK, body: metricsOut{
		PostReadings: m.endpoints[epPostReadings].summary(),
		GetWeather:   m.endpoints[epGetWeather].summary(),
		Healthz:      m.endpoints[epHealthz].summary(),
		Metrics:      m.endpoints[epMetrics].summary(),
		Status: map[string]uint64{
			"2xx": m.status[0].Load(), "4xx": m.status[1].Load(), "5xx": m.status[2].Load(),
		},
	}}
}

func notAllowed(allow string) reply {
	r := errorReply(http.StatusMethodNotAllowed, "method not allowed")
	r.allow = allow
	return r
}

func (a *app) route(r *http.Request) (int, reply) {
	switch path := r.URL.Path; path {
	case "/readings":
		if r.Method != http.MethodPost {
			return epPostReadings, notAllowed("POST")
		}
		return epPostReadings, a.postReadings(r)
	case "/healthz":
		if r.Method != http.MethodGet {
			return epHealthz, notAllowed("GET")
		}
		return epHealthz, a.healthz()
	case "/metrics":
		if r.Method != http.MethodGet {
			return epMetrics, notAllowed("GET")
		}
		return epMetrics, a.metricsReply()
	default:
		name := strings.TrimPrefix(path, "/weather/")
		if name == path || name == "" || strings.Contains(name, "/") {
			return epNone, errorReply(http.StatusNotFound, "unknown path")
		}
		if r.Method != http.MethodGet {
			return epGetWeather, notAllowed("GET")
		}
		return epGetWeather, a.getWeather(name)
	}
}

func (a *app) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	ep, rep := a.route(r)
	body, err := json.Marshal(rep.body)
	if err != nil {
		rep, body = errorReply(http.StatusInternalServerError, "encoding"), []byte(`{"error":"encoding"}`)
	}
	if ep != epNone {
		a.metrics.endpoints[ep].add(uint64(time.Since(start)))
	}
	switch rep.status / 100 {
	case 2:
		a.metrics.status[0].Add(1)
	case 4:
		a.metrics.status[1].Add(1)
	case 5:
		a.metrics.status[2].Add(1)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	if rep.allow != "" {
		h.Set("Allow", rep.allow)
	}
	// After 400, 408 and 413 part of the request may still be unread: close the connection.
	switch rep.status {
	case http.StatusBadRequest, http.StatusRequestTimeout, http.StatusRequestEntityTooLarge:
		h.Set("Connection", "close")
	}
	w.WriteHeader(rep.status)
	w.Write(body)
}

// ---------------------------------------------------------------------------------------
// Startup and shutdown

func main() {
	log.SetFlags(0)
	log.SetPrefix("weather-go: ")
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "serve" {
		args = args[1:]
	}
	fs := flag.NewFlagSet("weather-go", flag.ContinueOnError)
	listen := fs.String("listen", "", "HOST:PORT to listen on (required)")
	dbPath := fs.String("db", "", "SQLite database file or postgresql:// URL (required)")
	workers := fs.Int("workers", runtime.NumCPU(), "GOMAXPROCS")
	ttlMs := fs.Int64("forecast-ttl-ms", 1000, "age in ms after which a forecast is stale")
	refreshMs := fs.Int64("refresh-ms", 1000, "period in ms of the background refresh")
	lingerMs := fs.Int64("batch-linger-ms", 0, "how long the writer waits for more after the first of a batch")
	if err := fs.Parse(args); err != nil || fs.NArg() != 0 || *listen == "" || *dbPath == "" ||
		*workers < 1 || *ttlMs < 0 || *refreshMs < 1 || *lingerMs < 0 {
		fmt.Fprintln(os.Stderr, "usage: weather-go [serve] --listen HOST:PORT --db FILE|postgresql://... [--workers N] "+
			"[--forecast-ttl-ms MS] [--refresh-ms MS] [--batch-linger-ms MS]")
		os.Exit(64)
	}
	runtime.GOMAXPROCS(*workers)

	a := &app{index: map[string]*city{}, writes: make(chan job, writerQueue),
		linger: time.Duration(*lingerMs) * time.Millisecond, ttlMs: *ttlMs}
	var err error
	if conninfo, isPG := pgConninfo(*dbPath); isPG {
		if a.pg, err = openPG(conninfo, nowMs()); err != nil {
			log.Fatalf("opening the PostgreSQL database: %v", err)
		}
		if a.cities, err = a.pg.loadCities(); err != nil {
			log.Fatalf("loading the cities: %v", err)
		}
	} else {
		if a.db, err = openDB(*dbPath); err != nil {
			log.Fatalf("opening %s: %v", *dbPath, err)
		}
		if err := seed(a.db, nowMs()); err != nil {
			log.Fatalf("seeding: %v", err)
		}
		if a.cities, err = loadCities(a.db); err != nil {
			log.Fatalf("loading the cities: %v", err)
		}
		if a.recent, err = a.db.Prepare(recentSQL); err != nil {
			log.Fatalf("preparing: %v", err)
		}
		if a.insert, err = a.db.Prepare(insertSQL); err != nil {
			log.Fatalf("preparing: %v", err)
		}
	}
	for _, c := range a.cities {
		a.index[c.name] = c
	}
	a.readOK.Store(true)
	a.writeOK.Store(true)

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("listening on %s: %v", *listen, err)
	}
	srv := &http.Server{
		Handler:           a,
		ReadHeaderTimeout: requestTimeout,
		ReadTimeout:       requestTimeout, // the whole request, from its first byte
		IdleTimeout:       time.Minute,    // as plaza's; otherwise ReadTimeout would apply
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	writerStopped := make(chan struct{})
	go a.writer(writerStopped)
	ctx, stopRefresher := context.WithCancel(context.Background())
	refresherStopped := make(chan struct{})
	go func() { a.refresher(ctx, time.Duration(*refreshMs)*time.Millisecond); close(refresherStopped) }()
	checkpointerStopped := make(chan struct{})
	go func() {
		if a.db != nil {
			a.checkpointer(ctx)
		}
		close(checkpointerStopped)
	}()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Printf("listening on %s (GOMAXPROCS %d, db %s)", ln.Addr(), *workers, *dbPath)

	select {
	case <-sigs:
	case err := <-served:
		log.Fatalf("serving: %v", err)
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		log.Printf("shutdown: %v", err)
	}
	stopRefresher()
	<-refresherStopped
	<-checkpointerStopped
	close(a.writes) // every handler has returned: nobody sends any more
	<-writerStopped
	if a.pg != nil {
		a.pg.close()
	} else {
		a.db.Close()
	}
	log.Printf("stopped")
}
