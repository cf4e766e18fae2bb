// The PostgreSQL back end of the Go weather service, chosen by a --db that is a libpq URL
// (postgresql://..., postgres://...) or "pg:" followed by a key=value connection string. It
// has the schema, statements, connections and lock choices of plaza's PostgreSQL back end
// (apps/weather/storage_pg.c, forecast.c) for one replica, on database/sql and lib/pq:
//
//   - Connections, one per role: the writer's own (a sql.DB of one connection, which
//     database/sql reconnects if it broke), a pool of 4 for the readers, and 4 lock sessions
//     (each a sql.Conn, a session of its own, lent through a channel).
//   - A batch of readings is one statement (INSERT ... SELECT FROM unnest() of three array
//     parameters), so one implicit transaction in one round trip: stored whole or not at all.
//   - Forecasts live in the table `forecasts`, as plaza's service keeps them for its
//     replicas. A refresh, with the city's forecast mutex held by the caller (single flight
//     within the process), borrows a lock session, takes the city's session-level advisory
//     lock together with the next fencing token (pg_advisory_lock and nextval in one
//     statement), reads the stored forecast, adopts it if another process wrote it recently
//     or else reads the 32 newest readings, computes and writes it with the token (the write
//     applies only if no higher token wrote the city), then unlocks. The sessions run with
//     idle_session_timeout = 5 s, plaza's default lease.
//   - Every statement is prepared once per connection (sql.Stmt), so each call is one round
//     trip.
//
// A lock session whose lock statement or unlock did not complete may still hold an advisory
// lock: its connection is discarded (closing it releases whatever it held) and a new session
// is made in its place when next needed.
package main

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log"
	"strings"
	"time"

	"github.com/lib/pq"
)

const (
	pgReaders      = 4
	pgLockSessions = 4
	pgLeaseMs      = 5000
	pgCallTimeout  = 30 * time.Second // plaza's PG_TIMEOUT
	pgLockTimeout  = time.Second      // plaza's --lock-timeout-ms default
	pgUnlockWait   = 5 * time.Second

	// The protocol's seed computed in float8, as plaza's back end does.
	pgSeedCities = `INSERT INTO cities(name, base) SELECT 'city' || lpad(i::text, 2, '0'),
 ((i * 7) % 40)::float8 - 5.0::float8 FROM generate_series(0, 63) i`
	pgSeedReadings = `INSERT INTO readings(city, temperature, time) SELECT 'city' || lpad(i::text, 2, '0'),
 (((i * 7) % 40)::float8 - 5.0::float8) + (((k * 13 + i) % 11) - 5)::float8 * 0.1::float8,
 $1::bigint - (31 - k) * 60000 FROM generate_series(0, 63) i, generate_series(0, 31) k ORDER BY i, k`
	pgInsert      = `INSERT INTO readings(city, temperature, time) SELECT * FROM unnest($1::text[], $2::float8[], $3::bigint[])`
	pgRecent      = `SELECT temperature, time FROM readings WHERE city = $1 ORDER BY time DESC LIMIT $2::int`
	pgForecastGet = `SELECT temperature, computed_at, based_on, token FROM forecasts WHERE city = $1`
	// The fencing check and the write in one statement: nothing is written (0 rows) when a
	// higher token has written the city.
	pgForecastPut = `INSERT INTO forecasts AS f (city, temperature, computed_at, based_on, token)
 VALUES ($1, $2::float8, $3::bigint, $4::int, $5::bigint) ON CONFLICT (city) DO UPDATE
 SET temperature = EXCLUDED.temperature, computed_at = EXCLUDED.computed_at,
 based_on = EXCLUDED.based_on, token = EXCLUDED.token WHERE f.token <= EXCLUDED.token`
	// nextval runs once the lock is granted: the subquery in FROM is evaluated first.
	pgLock   = `SELECT nextval('plaza_fence_seq') FROM (SELECT pg_advisory_lock($1::bigint)) l`
	pgUnlock = `SELECT pg_advisory_unlock($1::bigint)`
)

var pgSchema = []string{
	`CREATE TABLE IF NOT EXISTS cities(name TEXT PRIMARY KEY, base DOUBLE PRECISION NOT NULL)`,
	`CREATE TABLE IF NOT EXISTS readings(id BIGSERIAL PRIMARY KEY, city TEXT NOT NULL,
 temperature DOUBLE PRECISION NOT NULL, time BIGINT NOT NULL)`,
	`CREATE INDEX IF NOT EXISTS readings_city_time ON readings(city, time)`,
	`CREATE TABLE IF NOT EXISTS forecasts(city TEXT PRIMARY KEY, temperature DOUBLE PRECISION NOT NULL,
 computed_at BIGINT NOT NULL, based_on INT NOT NULL, token BIGINT NOT NULL)`,
}

var pgFenceSetup = []string{
	`CREATE SEQUENCE IF NOT EXISTS plaza_fence_seq`,
	`CREATE TABLE IF NOT EXISTS plaza_fence_seen (key bigint PRIMARY KEY, token bigint NOT NULL)`,
}

// pgConninfo: the connection string lib/pq takes, and whether db names PostgreSQL at all.
func pgConninfo(db string) (string, bool) {
	if strings.HasPrefix(db, "postgresql://") || strings.HasPrefix(db, "postgres://") {
		return db, true
	}
	if strings.HasPrefix(db, "pg:") {
		return db[3:], true
	}
	return "", false
}

type lockSession struct {
	conn         *sql.Conn
	lock, unlock *sql.Stmt
}

type pgStore struct {
	writer, readers, locks *sql.DB
	insert                 *sql.Stmt // on writer
	recent, fget, fput     *sql.Stmt // on readers
	// Each idle lock session once; nil stands for one to make (a discarded one's place).
	sessions chan *lockSession
}

// storedForecast is a city's row of `forecasts`.
type storedForecast struct {
	temperature float64
	computedAt  int64
	basedOn     int
	token       uint64
}

func callCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), pgCallTimeout)
}

// execRetry: services starting at once can collide creating one object; the next try finds it.
func execRetry(db *sql.DB, sqlText string) (err error) {
	for attempt := 0; attempt < 3; attempt++ {
		if _, err = db.Exec(sqlText); err == nil {
			return nil
		}
	}
	return err
}

// openPG connects, creates the schema (and the fencing objects) if missing, seeds an empty
// database and opens the lock sessions.
func openPG(conninfo string, start int64) (*pgStore, error) {
	s := &pgStore{sessions: make(chan *lockSession, pgLockSessions)}
	var err error
	open := func(n int) *sql.DB {
		db, e := sql.Open("postgres", conninfo)
		if e != nil && err == nil {
			err = e
		}
		if db != nil {
			db.SetMaxOpenConns(n)
			db.SetMaxIdleConns(n)
		}
		return db
	}
	s.writer, s.readers, s.locks = open(1), open(pgReaders), open(pgLockSessions)
	if err != nil {
		return nil, err
	}
	for _, q := range pgSchema {
		if err := execRetry(s.writer, q); err != nil {
			return nil, fmt.Errorf("schema: %w", err)
		}
	}
	if err := pgSeed(s.writer, start); err != nil {
		return nil, fmt.Errorf("seeding: %w", err)
	}
	prepare := func(db *sql.DB, q string) *sql.Stmt {
		st, e := db.Prepare(q)
		if e != nil && err == nil {
			err = e
		}
		return st
	}
	s.insert = prepare(s.writer, pgInsert)
	s.recent = prepare(s.readers, pgRecent)
	s.fget = prepare(s.readers, pgForecastGet)
	s.fput = prepare(s.readers, pgForecastPut)
	if err != nil {
		return nil, err
	}
	// The lock sessions are made at start, as plaza's service makes them.
	for i := 0; i < pgLockSessions; i++ {
		ls, err := s.newSession()
		if err != nil {
			return nil, fmt.Errorf("lock session: %w", err)
		}
		s.sessions <- ls
	}
	return s, nil
}

// pgSeed: in one transaction that first locks `cities`, so that two services starting on
// one empty database seed it once.
func pgSeed(db *sql.DB, start int64) error {
	tx, err := db.Begin()
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.Exec(`LOCK TABLE cities IN EXCLUSIVE MODE`); err != nil {
		return err
	}
	var have int
	if err := tx.QueryRow(`SELECT count(*) FROM cities`).Scan(&have); err != nil {
		return err
	}
	if have == 0 {
		if _, err := tx.Exec(pgSeedCities); err != nil {
			return err
		}
		if _, err := tx.Exec(pgSeedReadings, start); err != nil {
			return err
		}
	}
	return tx.Commit()
}

func (s *pgStore) newSession() (*lockSession, error) {
	ctx, cancel := callCtx()
	defer cancel()
	conn, err := s.locks.Conn(ctx)
	if err != nil {
		return nil, err
	}
	ls := &lockSession{conn: conn}
	for _, q := range append(pgFenceSetup, fmt.Sprintf("SET idle_session_timeout = %d", pgLeaseMs)) {
		for attempt := 0; attempt < 3; attempt++ {
			if _, err = conn.ExecContext(ctx, q); err == nil {
				break
			}
		}
		if err != nil {
			ls.discard()
			return nil, err
		}
	}
	if ls.lock, err = conn.PrepareContext(ctx, pgLock); err == nil {
		ls.unlock, err = conn.PrepareContext(ctx, pgUnlock)
	}
	if err != nil {
		ls.discard()
		return nil, err
	}
	return ls, nil
}

// discard closes the session's connection for good (not back to the idle pool), which ends
// the session on the server and so releases any advisory lock it holds.
func (ls *lockSession) discard() {
	ls.conn.Raw(func(any) error { return driver.ErrBadConn })
	ls.conn.Close()
}

func (s *pgStore) loadCities() ([]*city, error) {
	ctx, cancel := callCtx()
	defer cancel()
	rows, err := s.readers.QueryContext(ctx, `SELECT name, base FROM cities ORDER BY name`)
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
		recent, err := s.recentReadings(c.name, 1)
		if err != nil {
			return nil, err
		}
		c.cur.temperature = c.base
		if len(recent) == 1 {
			c.cur.temperature, c.cur.time = recent[0].temperature, recent[0].time
		}
	}
	return cities, nil
}

func (s *pgStore) recentReadings(name string, max int) ([]sample, error) {
	ctx, cancel := callCtx()
	defer cancel()
	rows, err := s.recent.QueryContext(ctx, name, max)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	recent := make([]sample, 0, max)
	for rows.Next() {
		var x sample
		if err := rows.Scan(&x.temperature, &x.time); err != nil {
			return nil, err
		}
		recent = append(recent, x)
	}
	return recent, rows.Err()
}

// forecastGet: the stored forecast of the city, or nil.
func (s *pgStore) forecastGet(name string) (*storedForecast, error) {
	ctx, cancel := callCtx()
	defer cancel()
	var f storedForecast
	var token int64
	err := s.fget.QueryRowContext(ctx, name).Scan(&f.temperature, &f.computedAt, &f.basedOn, &token)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	f.token = uint64(token)
	return &f, nil
}

// forecastPut: true if written, false if refused (a higher token wrote the city first).
func (s *pgStore) forecastPut(name string, f *storedForecast) (bool, error) {
	ctx, cancel := callCtx()
	defer cancel()
	res, err := s.fput.ExecContext(ctx, name, f.temperature, f.computedAt, f.basedOn, int64(f.token))
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// insertBatch commits the readings in one statement (one implicit transaction).
func (s *pgStore) insertBatch(jobs []job) error {
	var cities []string
	var temps []float64
	var times []int64
	for _, j := range jobs {
		for _, r := range j.rows {
			cities = append(cities, r.city.name)
			temps = append(temps, r.temperature)
			times = append(times, r.time)
		}
	}
	if len(cities) == 0 {
		return nil
	}
	ctx, cancel := callCtx()
	defer cancel()
	res, err := s.insert.ExecContext(ctx, pq.Array(cities), pq.Array(temps), pq.Array(times))
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil || n != int64(len(cities)) {
		return fmt.Errorf("short insert: %d of %d rows (%v)", n, len(cities), err)
	}
	return nil
}

// cityKey: the distributed lock's key of a city, FNV-1a of a name of its own, as plaza's
// service computes it, so that both take the same advisory lock for a city.
func cityKey(name string) int64 {
	h := uint64(1469598103934665603)
	for _, b := range []byte("plaza-weather/forecast/" + name) {
		h = (h ^ uint64(b)) * 1099511628211
	}
	return int64(h)
}

// refresh refreshes c's forecast under its distributed lock; the caller holds c.fcMu.
// A stored forecast younger than freshMs, written by another holder than the one c.fc
// came from, is adopted.
func (s *pgStore) refresh(c *city, freshMs int64) error {
	deadline := time.Now().Add(pgLockTimeout)
	var ls *lockSession
	select {
	case ls = <-s.sessions:
	case <-time.After(time.Until(deadline)):
		return errors.New("no lock session within the lock timeout")
	}
	key := cityKey(c.name)
	var token int64
	var err error
	// One retry on a new session if the lent one failed before the deadline: it was most
	// likely ended while idle (its lease; database/sql then reports the connection bad or
	// closed), and held nothing then.
	for attempt := 0; attempt < 2; attempt++ {
		if ls == nil {
			if ls, err = s.newSession(); err != nil {
				s.sessions <- nil
				return err
			}
		}
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		err = ls.lock.QueryRowContext(ctx, key).Scan(&token)
		cancel()
		if err == nil {
			break
		}
		// The statement may have been granted as it was given up: the session goes.
		ls.discard()
		ls = nil
		if !time.Now().Before(deadline) {
			break
		}
	}
	if err != nil {
		s.sessions <- nil
		return fmt.Errorf("distributed lock: %w", err)
	}
	err = s.refreshHeld(c, freshMs, uint64(token))
	ctx, cancel := context.WithTimeout(context.Background(), pgUnlockWait)
	var released bool
	if e := ls.unlock.QueryRowContext(ctx, key).Scan(&released); e != nil {
		ls.discard() // ending the session releases the lock
		ls = nil
	} else if !released {
		log.Printf("distributed lock of %s (token %d) was lost while held", c.name, token)
	}
	cancel()
	s.sessions <- ls
	return err
}

func (s *pgStore) refreshHeld(c *city, freshMs int64, token uint64) error {
	stored, err := s.forecastGet(c.name)
	if err != nil {
		return err
	}
	if stored != nil && stored.token != c.fc.token && freshMs > 0 && nowMs()-stored.computedAt < freshMs {
		// Another process refreshed it recently: single flight across processes.
		c.setStored(stored)
		return nil
	}
	recent, err := s.recentReadings(c.name, 32)
	if err != nil {
		return err
	}
	prev, first := c.base, true
	if stored != nil {
		prev, first = stored.temperature, false
	}
	f := &storedForecast{temperature: nextForecast(prev, first, recent), computedAt: nowMs(), basedOn: len(recent), token: token}
	ok, err := s.forecastPut(c.name, f)
	if err != nil {
		return err
	}
	if !ok {
		// The lock was lost and a later holder wrote: its forecast is the one to serve.
		log.Printf("forecast of %s not written: token %d is stale", c.name, token)
		if f, err = s.forecastGet(c.name); err != nil {
			return err
		}
		if f == nil {
			return errors.New("forecast refused but none stored")
		}
	}
	c.setStored(f)
	return nil
}

func (c *city) setStored(f *storedForecast) {
	c.fc = forecast{temperature: f.temperature, computedAt: f.computedAt, basedOn: f.basedOn, token: f.token}
}

func (s *pgStore) close() {
	close(s.sessions)
	for ls := range s.sessions {
		if ls != nil {
			ls.conn.Close()
		}
	}
	s.writer.Close()
	s.readers.Close()
	s.locks.Close()
}
