package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicegw/sluice/topics"
)

// RedisOptions configures a RedisStore.
type RedisOptions struct {
	// Prefix starts every key, so that several deployments (or tests) can
	// share one Redis. Default "sluice:". It should not contain '{' or '}':
	// they would change the hash tags and so the Cluster slots of the keys.
	Prefix string
	// Logger receives what the store cleans up or cannot: failed best-effort
	// cleanups and undecodable sessions. Default slog.Default().
	Logger *slog.Logger
}

// RedisStore is the SessionStore and PresenceStore shared by every instance
// through Redis (6.2 or later; standalone, Sentinel or Cluster).
//
// Keys, under the Prefix (hash tags in braces; every multi-key script stays
// inside one tag, so one Cluster slot):
//
//	{s:<id>}           the session's JSON; TTL = the deadline it was last
//	                   renewed with + sessionGrace (see TouchMany)
//	{s:<id>}:lock      the session's lock token; TTL lockTTL
//	{expiry}           sorted set: session id → deadline (unix ms); bounded
//	                   by the live sessions, and Claim drops ids without data
//	{sock:<socket id>} set of the socket's session ids; TTL socketTTL
//	{p:<topic>}        hash: owner+"\x00"+key → presence entry JSON
//	{p:<topic>}:o      sorted set (all scores 0) of the same fields, so that
//	                   one owner's fields are found by a ZRANGEBYLEX range;
//	                   both presence keys share presenceTTL
//
// The owner index is one key per topic, not a set per owner: every put
// refreshes the TTLs of both keys at once, so an owner's index can never
// expire before its entries, which would leave presences that no
// RemovePresence finds and whose leave is never announced.
//
// Ids, socket ids and topics are escaped inside the tags ('%', '{', '}'), so
// that no value can end a tag early or merge two tags.
//
// Redis should run with maxmemory-policy noeviction: an evicted {expiry}
// would leave sessions that are never expired (their TTL still ends them,
// but without presence leaves).
type RedisStore struct {
	rdb    redis.UniversalClient
	prefix string
	log    *slog.Logger
	// grace is how long a session's data outlives the deadline it was
	// last written with: sessionGrace (tests shorten it).
	grace time.Duration
	// now is the clock its TTLs are computed from: time.Now (tests drive
	// it along with the keeper's).
	now func() time.Time
}

var (
	_ SessionStore  = (*RedisStore)(nil)
	_ PresenceStore = (*RedisStore)(nil)
)

const (
	// sessionGrace is how long a session's data outlives the deadline of
	// its last renewal (Create, Touch, TouchMany with renew). The deadline
	// index ends sessions; the TTL only keeps a lost index from leaving
	// data behind for ever, so it is generous, and a held session's data
	// needs renewing only every half of it (see keeper).
	sessionGrace = 24 * time.Hour
	// socketTTL bounds a socket index. It is refreshed by Create and by
	// Save (every handled request, including phoenix.js heartbeats), so it
	// outlives the sessions it lists while their clients are active.
	socketTTL = 48 * time.Hour
	// presenceTTL bounds a topic's presence keys if their owners' sessions
	// vanish without ending (a lost {expiry}). Every PutPresence refreshes
	// it; it is long so that a quiet room keeps the presences of the people
	// sitting in it.
	presenceTTL = 7 * 24 * time.Hour
	// lockTTL is how long a lock outlives a holder that died. A holder that
	// works longer than this loses exclusivity; the gateway's critical
	// sections are one request's handling, far shorter.
	lockTTL = 15 * time.Second
	// lockRetryMin and lockRetryMax bound the backoff of a waiting Lock.
	lockRetryMin = 5 * time.Millisecond
	lockRetryMax = 100 * time.Millisecond
	// unlockTimeout bounds an unlock, which cannot use the Lock's context
	// (the gateway cancels it as soon as Lock returns).
	unlockTimeout = 5 * time.Second
)

// NewRedisStore returns a store on client. The caller owns client.
func NewRedisStore(client redis.UniversalClient, opts RedisOptions) *RedisStore {
	if opts.Prefix == "" {
		opts.Prefix = "sluice:"
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &RedisStore{rdb: client, prefix: opts.Prefix, log: opts.Logger, grace: sessionGrace, now: time.Now}
}

// tagEscaper keeps values from closing (or opening) a hash tag; it is
// injective, so distinct values keep distinct keys.
var tagEscaper = strings.NewReplacer("%", "%25", "{", "%7B", "}", "%7D")

func (r *RedisStore) sessionKey(id string) string {
	return r.prefix + "{s:" + tagEscaper.Replace(id) + "}"
}
func (r *RedisStore) lockKey(id string) string { return r.sessionKey(id) + ":lock" }
func (r *RedisStore) expiryKey() string        { return r.prefix + "{expiry}" }
func (r *RedisStore) socketKey(sock string) string {
	return r.prefix + "{sock:" + tagEscaper.Replace(sock) + "}"
}

// presenceKeys returns a topic's entry hash and its owner index.
func (r *RedisStore) presenceKeys(topic string) (hash, index string) {
	hash = r.prefix + "{p:" + tagEscaper.Replace(topic) + "}"
	return hash, hash + ":o"
}

// deadlineScore is a deadline in unix ms rounded up, and nowScore a time
// rounded down, so that a session is never claimed before its deadline
// (at worst under 1 ms after it). Unix ms are exact in a float64 score.
func deadlineScore(t time.Time) float64 {
	ms := t.UnixMilli()
	if t.After(time.UnixMilli(ms)) {
		ms++
	}
	return float64(ms)
}

func nowScore(t time.Time) int64 { return t.UnixMilli() }

// sessionTTL is the safety-net TTL of a session's data.
func (r *RedisStore) sessionTTL(deadline time.Time) time.Duration {
	return max(deadline.Sub(r.now()), 0) + r.grace
}

// dataGrace tells the keeper how long a session's data outlives the
// deadline of its last renewal (see SessionStore.TouchMany).
func (r *RedisStore) dataGrace() time.Duration { return r.grace }

// Create implements SessionStore. One round trip on one server: the
// deadline, the data (SET NX) and then the socket index (reserveScript),
// pipelined; on a Cluster, two (the index once the data is written). Over the
// per-socket limit, two more: the liveness of the listed sessions, and
// reserveScript again without the dead ones; then, if still refused, one to
// take the data back.
//
// The deadline goes in with ZADD NX in the same round trip as the data, not
// after it: a crash between the two would otherwise leave a session that no
// Claim ever finds (its presences never leaving). An id in {expiry} without
// data is harmless: Claim drops it. NX keeps a refused Create from moving
// the existing session's deadline.
//
// The limit is checked and the id indexed by one script on the socket's
// index, so that concurrent Creates of one socket are serialized there. The
// session's data and deadline live in other hash tags (Cluster slots), so
// the script cannot read them: the liveness of listed ids is read outside it
// and passed in, and the script counts every id it is not told is dead,
// including ids indexed meanwhile by racing Creates. The data is written
// before the id is indexed, so a listed id without data is gone for good
// (sessions never come back), never a Create in progress.
func (r *RedisStore) Create(ctx context.Context, s *Session, deadline time.Time, maxPerSocket int) error {
	return r.create(ctx, s, deadline, maxPerSocket, nil)
}

// createWithHead is Create, with the head of topic, a broker topic on the
// store's client, read in the same round trip (queued first); on an error
// after the session was written, it takes the session back. The gateway
// uses it for a new session's mailbox, which nobody can publish to before
// the client has the session's id, so reading its head with the creation
// rather than before changes nothing.
func (r *RedisStore) createWithHead(ctx context.Context, s *Session, deadline time.Time, maxPerSocket int, b *topics.RedisBroker, topic string) (uint64, error) {
	var head func() (uint64, error)
	if err := r.create(ctx, s, deadline, maxPerSocket, func(p redis.Pipeliner) { head = b.HeadPipelined(ctx, p, topic) }); err != nil {
		return 0, err
	}
	h, err := head()
	if err != nil {
		r.undoCreate(ctx, s)
		return 0, fmt.Errorf("read the mailbox's head: %w", err)
	}
	return h, nil
}

// create is Create; with, if set, queues commands of the caller's first in
// the pipeline that writes the session.
func (r *RedisStore) create(ctx context.Context, s *Session, deadline time.Time, maxPerSocket int, with func(redis.Pipeliner)) error {
	data, err := marshalJSON(s)
	if err != nil {
		return fmt.Errorf("redis: encode session: %w", err)
	}
	key, score := r.sessionKey(s.ID), deadlineScore(deadline)
	sock := s.SocketID()
	// On one server, the socket index goes in the same pipeline, after the
	// data: one connection runs them in order. A Cluster may send them to
	// different nodes, so there it waits for the data to be written.
	_, cluster := r.rdb.(*redis.ClusterClient)
	var zadd *redis.IntCmd
	var set *redis.BoolCmd
	var reserved *redis.Cmd
	_, _ = r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		if with != nil {
			with(p)
		}
		zadd = p.ZAddArgs(ctx, r.expiryKey(), redis.ZAddArgs{NX: true, Members: []redis.Z{{Score: score, Member: s.ID}}})
		set = p.SetNX(ctx, key, data, r.sessionTTL(deadline))
		if !cluster {
			reserved = reserveScript.EvalSha(ctx, p, []string{r.socketKey(sock)}, reserveArgs(s.ID, maxPerSocket, nil, nil)...)
		}
		return nil
	})
	if err := set.Err(); err != nil {
		// The SET may have run all the same: leave {expiry} as it is (an
		// orphan id there is dropped by Claim; a missing one is not).
		return fmt.Errorf("redis: create session %s: %w", s.ID, err)
	}
	if !set.Val() {
		if reserved != nil && reserved.Err() == nil && reserved.Val() == int64(1) {
			// Indexed by this refused Create (the session of that id is
			// another socket's): take it back.
			if err := r.rdb.SRem(context.WithoutCancel(ctx), r.socketKey(sock), s.ID).Err(); err != nil {
				r.log.Warn("redis: create session: unindex a refused id", "session", LogSession(s.ID), "err", err)
			}
		}
		return fmt.Errorf("redis: create session %s: already exists", SessionHandle(s.ID))
	}
	if err := zadd.Err(); err != nil {
		// Data without a deadline would never be claimed: take it back, so
		// the Create fails whole (its client never learns the id).
		r.undoCreate(ctx, s)
		return fmt.Errorf("redis: create session %s: set deadline: %w", s.ID, err)
	}
	if zadd.Val() == 0 {
		// An id left in {expiry} by a session of the same id that ended
		// uncleanly: the new session's deadline replaces it.
		if err := r.rdb.ZAdd(ctx, r.expiryKey(), redis.Z{Score: score, Member: s.ID}).Err(); err != nil {
			r.undoCreate(ctx, s)
			return fmt.Errorf("redis: create session %s: set deadline: %w", s.ID, err)
		}
	}
	var listed []string
	if reserved != nil && !isNoScript(reserved.Err()) {
		listed, err = reserveResult(reserved.Result())
	} else {
		listed, err = r.reserve(ctx, sock, s.ID, maxPerSocket, nil, nil)
	}
	if err == nil && listed != nil {
		// Over the limit counting every listed id: count only the live ones.
		var gone, expired []string
		if gone, expired, err = r.deadSessions(ctx, listed, time.Now()); err == nil {
			listed, err = r.reserve(ctx, sock, s.ID, maxPerSocket, gone, expired)
		}
	}
	if err != nil {
		r.undoCreate(ctx, s)
		return fmt.Errorf("redis: create session %s: index socket: %w", s.ID, err)
	}
	if listed != nil {
		r.undoCreate(ctx, s)
		return tooManySessions(sock, len(listed), maxPerSocket)
	}
	return nil
}

// reserveScript indexes a new session under its socket if the socket has
// fewer than a limit of live sessions, and refreshes the index's TTL. It
// first drops the ids it is told are gone, then counts the listed ids but
// the dead ones it is told of (gone, or past their deadline). It returns 1
// (2 if the id was indexed already), or, refusing, the ids it counted as
// live.
//
// KEYS: the socket index. ARGV: id, limit (0: none), ttl ms, number of gone
// ids, the gone ids, then the expired ids.
var reserveScript = redis.NewScript(`
local limit = tonumber(ARGV[2])
if limit > 0 then
  local ngone = tonumber(ARGV[4])
  local dead = {}
  for i = 5, #ARGV do dead[ARGV[i]] = true end
  for i = 5, 4 + ngone do redis.call('SREM', KEYS[1], ARGV[i]) end
  local live = {}
  for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    if not dead[m] and m ~= ARGV[1] then live[#live + 1] = m end
  end
  if #live >= limit then return live end
end
local added = redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if added == 1 then return 1 end
return 2
`)

// reserve runs reserveScript: it returns nil if id is indexed, else the ids
// counted as live sessions of the socket.
func (r *RedisStore) reserve(ctx context.Context, socketID, id string, limit int, gone, expired []string) ([]string, error) {
	return reserveResult(reserveScript.Run(ctx, r.rdb, []string{r.socketKey(socketID)}, reserveArgs(id, limit, gone, expired)...).Result())
}

// reserveArgs returns reserveScript's arguments.
func reserveArgs(id string, limit int, gone, expired []string) []any {
	args := make([]any, 0, 4+len(gone)+len(expired))
	args = append(args, id, max(limit, 0), socketTTL.Milliseconds(), len(gone))
	for _, g := range gone {
		args = append(args, g)
	}
	for _, e := range expired {
		args = append(args, e)
	}
	return args
}

// reserveResult decodes reserveScript's reply: nil if the id is indexed,
// else the ids counted as live sessions of the socket.
func reserveResult(res any, err error) ([]string, error) {
	if err != nil {
		return nil, err
	}
	switch v := res.(type) {
	case int64:
		return nil, nil
	case []any:
		live := make([]string, 0, len(v))
		for _, m := range v {
			str, ok := m.(string)
			if !ok {
				return nil, fmt.Errorf("reserve: unexpected member %T", m)
			}
			live = append(live, str)
		}
		return live, nil
	default:
		return nil, fmt.Errorf("reserve: unexpected reply %T", res)
	}
}

// deadSessions sorts out the ids of ended sessions: gone (no data: removed,
// or ended by their TTL; for good) and expired (deadline passed, not yet
// removed). One round trip.
func (r *RedisStore) deadSessions(ctx context.Context, ids []string, now time.Time) (gone, expired []string, err error) {
	exists := make([]*redis.IntCmd, len(ids))
	scores := make([]*redis.FloatCmd, len(ids))
	_, _ = r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			exists[i] = p.Exists(ctx, r.sessionKey(id))
			scores[i] = p.ZScore(ctx, r.expiryKey(), id)
		}
		return nil
	})
	nowMs := float64(nowScore(now))
	for i, id := range ids {
		n, err := exists[i].Result()
		if err != nil {
			return nil, nil, fmt.Errorf("liveness of %s: %w", id, err)
		}
		if n == 0 {
			gone = append(gone, id)
			continue
		}
		d, err := scores[i].Result()
		switch {
		case errors.Is(err, redis.Nil):
			// Data without a deadline: count it, to be safe.
		case err != nil:
			return nil, nil, fmt.Errorf("deadline of %s: %w", id, err)
		case d <= nowMs:
			expired = append(expired, id)
		}
	}
	return gone, expired, nil
}

// undoCreate takes back a session whose Create failed after its data was
// written. Best effort: if it fails, the session is ended at its deadline,
// unknown to any client, and it is in no socket index, so counts for no
// limit.
func (r *RedisStore) undoCreate(ctx context.Context, s *Session) {
	ctx = context.WithoutCancel(ctx)
	_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, r.sessionKey(s.ID))
		p.ZRem(ctx, r.expiryKey(), s.ID)
		p.SRem(ctx, r.socketKey(s.SocketID()), s.ID)
		return nil
	})
	if err != nil {
		r.log.Error("redis: create session: undo", "session", LogSession(s.ID), "err", err)
	}
}

// Load implements SessionStore. One round trip.
func (r *RedisStore) Load(ctx context.Context, id string) (*Session, error) {
	data, err := r.rdb.Get(ctx, r.sessionKey(id)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, ErrNoSession
	} else if err != nil {
		return nil, fmt.Errorf("redis: load session %s: %w", id, err)
	}
	return decodeSession(data)
}

// Save implements SessionStore. One round trip: SET XX KEEPTTL (never
// revives; the deadline and its TTL stay), and the socket index's TTL.
func (r *RedisStore) Save(ctx context.Context, s *Session) error {
	data, err := marshalJSON(s)
	if err != nil {
		return fmt.Errorf("redis: encode session: %w", err)
	}
	var set *redis.BoolCmd
	var exp *redis.BoolCmd
	_, _ = r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		set = p.SetXX(ctx, r.sessionKey(s.ID), data, redis.KeepTTL)
		exp = p.PExpire(ctx, r.socketKey(s.SocketID()), socketTTL)
		return nil
	})
	if err := set.Err(); err != nil {
		return fmt.Errorf("redis: save session %s: %w", s.ID, err)
	}
	if !set.Val() {
		return ErrNoSession
	}
	r.warnSocketIndex(s.ID, exp)
	return nil
}

// warnSocketIndex logs a failed refresh of a saved session's socket index.
// The session is saved: failing now would make the gateway drop the replies
// of a batch it has applied. Only the index's TTL missed one refresh.
func (r *RedisStore) warnSocketIndex(id string, exp *redis.BoolCmd) {
	if err := exp.Err(); err != nil {
		r.log.Warn("redis: save session: refresh socket index", "session", LogSession(id), "err", err)
	}
}

// Touch implements SessionStore. One round trip: GET the data, PEXPIRE it
// (0: the session is gone) and ZADD XX, which updates the deadline of a
// listed id but never adds one, so a Touch racing a Remove cannot put a
// removed session back in {expiry}.
func (r *RedisStore) Touch(ctx context.Context, id string, deadline time.Time) (*Session, error) {
	var get *redis.StringCmd
	var exp *redis.BoolCmd
	var zadd *redis.IntCmd
	_, _ = r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		get = p.Get(ctx, r.sessionKey(id))
		exp = p.PExpire(ctx, r.sessionKey(id), r.sessionTTL(deadline))
		zadd = p.ZAddArgs(ctx, r.expiryKey(), redis.ZAddArgs{XX: true, Members: []redis.Z{{Score: deadlineScore(deadline), Member: id}}})
		return nil
	})
	if err := exp.Err(); err != nil {
		return nil, fmt.Errorf("redis: touch session %s: %w", id, err)
	}
	data, err := get.Bytes()
	if !exp.Val() || errors.Is(err, redis.Nil) {
		return nil, ErrNoSession
	}
	if err != nil {
		return nil, fmt.Errorf("redis: touch session %s: %w", id, err)
	}
	if err := zadd.Err(); err != nil {
		return nil, fmt.Errorf("redis: touch session %s: %w", id, err)
	}
	return decodeSession(data)
}

// TouchMany implements SessionStore. One round trip, on the single key
// {expiry} (so one Cluster node): one ZADD XX of every id (it never re-adds a
// removed id; see Touch) and one ZMSCORE of them all, which answers nil for
// an id no longer listed: removed, never created, or dropped by a Claim that
// found its data gone. So an idle stream's session costs Redis no command of
// its own, and a pass over 1,000 sessions two commands.
//
// With renew, the pipeline also holds one PEXPIRE per id, which moves the
// data's TTL to deadline + grace and reports a session whose data is gone
// although its id is still listed (a Remove whose unindexing failed); on a
// Cluster, go-redis sends each node its share in parallel. A gone id is
// reported only on an answer, not on an error.
func (r *RedisStore) TouchMany(ctx context.Context, ids []string, deadline time.Time, renew bool) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	var exps []*redis.BoolCmd
	if renew {
		exps = make([]*redis.BoolCmd, len(ids))
	}
	score := deadlineScore(deadline)
	members := make([]redis.Z, len(ids))
	args := make([]any, 2, 2+len(ids))
	args[0], args[1] = "zmscore", r.expiryKey()
	for i, id := range ids {
		members[i] = redis.Z{Score: score, Member: id}
		args = append(args, id)
	}
	var zadd *redis.IntCmd
	var scores *redis.Cmd
	_, _ = r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		if renew {
			ttl := r.sessionTTL(deadline)
			for i, id := range ids {
				exps[i] = p.PExpire(ctx, r.sessionKey(id), ttl)
			}
		}
		zadd = p.ZAddArgs(ctx, r.expiryKey(), redis.ZAddArgs{XX: true, Members: members})
		scores = p.Do(ctx, args...)
		return nil
	})
	if err := zadd.Err(); err != nil {
		return nil, fmt.Errorf("redis: touch %d sessions: deadlines: %w", len(ids), err)
	}
	listed, err := scores.Slice()
	if err == nil && len(listed) != len(ids) {
		err = fmt.Errorf("%d scores for %d ids", len(listed), len(ids))
	}
	if err != nil {
		return nil, fmt.Errorf("redis: touch %d sessions: read deadlines: %w", len(ids), err)
	}
	var gone []string
	for i, id := range ids {
		kept := listed[i] != nil
		if renew {
			ok, err := exps[i].Result()
			if err != nil {
				return nil, fmt.Errorf("redis: touch %d sessions: %s: %w", len(ids), SessionHandle(id), err)
			}
			kept = kept && ok
		}
		if !kept {
			gone = append(gone, id)
		}
	}
	return gone, nil
}

// unlockScript deletes a lock only if it still holds the caller's token, so
// an unlock after the lock expired never frees another holder's lock.
var unlockScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// lockScript takes a free lock for ARGV[1] for ARGV[2] ms: SET NX PX, except
// that finding its own token counts as success. go-redis re-sends a command
// whose connection broke before the reply (EOF), and a plain SET NX re-sent
// after it ran would find the lock taken, by this very caller, until lockTTL.
var lockScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if v == ARGV[1] then return 1 end
return 0
`)

// Lock implements SessionStore: a random token set with NX and lockTTL (see
// lockScript), retried with backoff (5 ms doubling to 100 ms) until ctx is
// done. One round trip per attempt; unlock is one round trip and safe to
// call twice.
func (r *RedisStore) Lock(ctx context.Context, id string) (func(), error) {
	l, _, err := r.lock(ctx, id, false)
	if err != nil {
		return nil, err
	}
	return l.unlock, nil
}

// LockLoad implements SessionStore. One round trip per attempt: the lock
// script and a GET of the session, pipelined. Both keys share the session's
// hash tag, so they are on one node, which runs them in order: the GET
// that follows a won lock reads the session under it.
func (r *RedisStore) LockLoad(ctx context.Context, id string) (func(), *Session, error) {
	l, s, err := r.lockLoad(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	return l.unlock, s, nil
}

// lockLoad is LockLoad, returning the lock itself, which saveUnlock can
// release with a save.
func (r *RedisStore) lockLoad(ctx context.Context, id string) (*redisLock, *Session, error) {
	l, data, err := r.lock(ctx, id, true)
	if err != nil {
		return nil, nil, err
	}
	if data == nil {
		l.unlock()
		return nil, nil, ErrNoSession
	}
	s, err := decodeSession(data)
	if err != nil {
		l.unlock()
		return nil, nil, fmt.Errorf("redis: load session %s: %w", id, err)
	}
	return l, s, nil
}

// redisLock is a held session lock.
type redisLock struct {
	r              *RedisStore
	key, token, id string
	ctx            context.Context // the Lock's, without its cancel
	once           sync.Once
}

// unlock releases the lock, once (one round trip); later calls do nothing.
func (l *redisLock) unlock() { l.once.Do(l.release) }

// release runs the unlock script (one round trip).
func (l *redisLock) release() {
	ctx, cancel := context.WithTimeout(l.ctx, unlockTimeout)
	defer cancel()
	if err := unlockScript.Run(ctx, l.r.rdb, []string{l.key}, l.token).Err(); err != nil {
		// The lock ends by its TTL instead.
		l.r.log.Warn("redis: unlock session", "session", LogSession(l.id), "err", err)
	}
}

// saveUnlockScript saves a session (SET XX KEEPTTL) and releases its lock,
// only if the lock still holds the caller's token: 1 saved, 0 the session
// is gone (the lock is released all the same), -1 the lock is not the
// caller's and nothing was written. go-redis sends a pipeline again when its
// connection broke before the reply or the reply timed out, although Redis
// may have run it: a second run must not write the session over what the
// next holder of the lock saved meanwhile.
var saveUnlockScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[1])
if redis.call('SET', KEYS[2], ARGV[2], 'XX', 'KEEPTTL') then return 1 end
return 0
`)

// errLockLost is saveUnlock's error for a session whose lock was no longer
// the caller's: its lock expired, or this is a second run of a save+unlock
// that had been done.
var errLockLost = errors.New("the session's lock was no longer held: not saved")

// lockLoadSave is LockLoad, with a save that also releases the lock (see
// saveUnlock): the gateway's lockSaver.
func (r *RedisStore) lockLoadSave(ctx context.Context, id string) (func(), func(context.Context, *Session) error, *Session, error) {
	l, s, err := r.lockLoad(ctx, id)
	if err != nil {
		return nil, nil, nil, err
	}
	return l.unlock, func(ctx context.Context, s *Session) error { return r.saveUnlock(ctx, s, l) }, s, nil
}

// saveUnlock is Save, then the release of l, in one round trip (both keys
// share the session's hash tag: one node runs saveUnlockScript on both),
// writing only while l is held (see saveUnlockScript). The lock is released
// even if the save fails; l.unlock then does nothing. If l was released
// already, it is Save.
func (r *RedisStore) saveUnlock(ctx context.Context, s *Session, l *redisLock) error {
	release := false
	l.once.Do(func() { release = true })
	if !release {
		return r.Save(ctx, s)
	}
	data, err := marshalJSON(s)
	if err != nil {
		l.release()
		return fmt.Errorf("redis: encode session: %w", err)
	}
	keys := []string{l.key, r.sessionKey(s.ID)}
	var saved *redis.Cmd
	var exp *redis.BoolCmd
	run := func(eval bool) {
		_, _ = r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			if eval {
				saved = saveUnlockScript.Eval(ctx, p, keys, l.token, data)
			} else {
				saved = saveUnlockScript.EvalSha(ctx, p, keys, l.token, data)
			}
			exp = p.PExpire(ctx, r.socketKey(s.SocketID()), socketTTL)
			return nil
		})
	}
	run(false)
	if isNoScript(saved.Err()) {
		run(true)
	}
	n, err := saved.Int()
	if err != nil {
		// The round trip failed, often because the save's context ran
		// out on a slow Redis: release the lock on its own, with the
		// unlock's own timeout, as unlock would, rather than leave the
		// session's next requests waiting for the lock's TTL. The unlock
		// frees only this lock, so running it after the script is
		// harmless.
		l.release()
		return fmt.Errorf("redis: save session %s: %w", s.ID, err)
	}
	switch n {
	case 0:
		return ErrNoSession
	case -1:
		return fmt.Errorf("redis: save session %s: %w", s.ID, errLockLost)
	}
	r.warnSocketIndex(s.ID, exp)
	return nil
}

// lock takes a session's lock (see Lock) and, with load, reads the
// session's data in the same round trip (nil: it is gone).
func (r *RedisStore) lock(ctx context.Context, id string, load bool) (*redisLock, []byte, error) {
	var b [16]byte
	_, _ = rand.Read(b[:])
	token := hex.EncodeToString(b[:])
	key := r.lockKey(id)
	wait := lockRetryMin
	var timer *time.Timer
	var data []byte
	for {
		got, d, err := r.lockAttempt(ctx, key, token, id, load)
		if err != nil {
			if cerr := ctx.Err(); cerr != nil {
				err = cerr
			}
			return nil, nil, fmt.Errorf("redis: lock session %s: %w", id, err)
		}
		if got {
			data = d
			break
		}
		if timer == nil {
			timer = time.NewTimer(wait)
			defer timer.Stop()
		} else {
			timer.Reset(wait)
		}
		select {
		case <-timer.C:
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("redis: lock session %s: %w", id, ctx.Err())
		}
		wait = min(2*wait, lockRetryMax)
	}
	return &redisLock{r: r, key: key, token: token, id: id, ctx: context.WithoutCancel(ctx)}, data, nil
}

// lockAttempt runs lockScript once and, with load, GETs the session after
// it in the same pipeline; a script missing from the server's cache costs
// a second round trip with its source.
func (r *RedisStore) lockAttempt(ctx context.Context, key, token, id string, load bool) (bool, []byte, error) {
	if !load {
		got, err := lockScript.Run(ctx, r.rdb, []string{key}, token, lockTTL.Milliseconds()).Int()
		return got == 1, nil, err
	}
	var lock *redis.Cmd
	var get *redis.StringCmd
	run := func(eval bool) {
		_, _ = r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			if eval {
				lock = lockScript.Eval(ctx, p, []string{key}, token, lockTTL.Milliseconds())
			} else {
				lock = lockScript.EvalSha(ctx, p, []string{key}, token, lockTTL.Milliseconds())
			}
			get = p.Get(ctx, r.sessionKey(id))
			return nil
		})
	}
	run(false)
	if isNoScript(lock.Err()) {
		run(true)
	}
	got, err := lock.Int()
	if err != nil || got != 1 {
		return false, nil, err
	}
	data, err := get.Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		return true, nil, nil
	case err != nil:
		// Locked, but the session could not be read: release and fail.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), unlockTimeout)
		defer cancel()
		_ = unlockScript.Run(ctx, r.rdb, []string{key}, token).Err()
		return false, nil, fmt.Errorf("load: %w", err)
	}
	return true, data, nil
}

// claimScript takes up to ARGV[3] ids whose deadline is not after ARGV[1]
// and moves them to ARGV[2] (now+lease), atomically, so that racing claimers
// never get the same id. It touches {expiry} only.
var claimScript = redis.NewScript(`
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], ARGV[2], id)
end
return ids
`)

// Claim implements SessionStore. Two round trips: the claim script on
// {expiry}, then the claimed sessions' data (pipelined GETs); a third drops
// the ids whose data is gone. A session whose data cannot be decoded is
// logged and skipped (it stays leased, and its TTL ends it): one bad record
// must not stop the expiry of the others.
func (r *RedisStore) Claim(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]*Session, error) {
	if limit <= 0 {
		return nil, nil
	}
	nowMs := nowScore(now)
	leaseMs := nowScore(now.Add(lease))
	raw, err := claimScript.Run(ctx, r.rdb, []string{r.expiryKey()}, nowMs, leaseMs, limit).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("redis: claim sessions: %w", err)
	}
	if len(raw) == 0 {
		return nil, nil
	}
	gets := make([]*redis.StringCmd, len(raw))
	_, _ = r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range raw {
			gets[i] = p.Get(ctx, r.sessionKey(id))
		}
		return nil
	})
	var out []*Session
	var gone []any
	for i, get := range gets {
		data, err := get.Bytes()
		switch {
		case errors.Is(err, redis.Nil):
			gone = append(gone, raw[i])
			continue
		case err != nil:
			// The claimed ids stay leased and are claimed again after it.
			return nil, fmt.Errorf("redis: claim sessions: load %s: %w", raw[i], err)
		}
		s, err := decodeSession(data)
		if err != nil {
			r.log.Error("redis: claim sessions: skipping undecodable session", "session", LogSession(raw[i]), "err", err)
			continue
		}
		out = append(out, s)
	}
	if len(gone) > 0 {
		// Removed meanwhile (Remove drops them too) or ended by their TTL.
		if err := r.rdb.ZRem(ctx, r.expiryKey(), gone...).Err(); err != nil {
			r.log.Warn("redis: claim sessions: drop ids without data", "ids", len(gone), "err", err)
		}
	}
	return out, nil
}

// Remove implements SessionStore. Two round trips: GETDEL, which only one
// caller can win, then the deadline and the socket index. Once GETDEL has
// won, the session is gone and is returned even if that cleanup fails (an id
// left in {expiry} is dropped by Claim, one left in a socket index by
// BySocket): failing would leave no caller announcing its departure.
func (r *RedisStore) Remove(ctx context.Context, id string) (*Session, error) {
	data, err := r.rdb.GetDel(ctx, r.sessionKey(id)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, ErrNoSession
	} else if err != nil {
		return nil, fmt.Errorf("redis: remove session %s: %w", id, err)
	}
	s, derr := decodeSession(data)
	_, err = r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.ZRem(ctx, r.expiryKey(), id)
		if derr == nil {
			p.SRem(ctx, r.socketKey(s.SocketID()), id)
		}
		return nil
	})
	if err != nil {
		r.log.Warn("redis: remove session: unindex", "session", LogSession(id), "err", err)
	}
	if derr != nil {
		return nil, fmt.Errorf("redis: remove session %s: %w", id, derr)
	}
	return s, nil
}

// BySocket implements SessionStore. Two round trips (SMEMBERS, then EXISTS
// of each listed session), and a third to drop listed ids whose session is
// gone (its Remove's cleanup failed, or its TTL ended it).
func (r *RedisStore) BySocket(ctx context.Context, socketID string) ([]string, error) {
	sock := r.socketKey(socketID)
	members, err := r.rdb.SMembers(ctx, sock).Result()
	if err != nil {
		return nil, fmt.Errorf("redis: sessions of %s: %w", socketID, err)
	}
	if len(members) == 0 {
		return nil, nil
	}
	exists := make([]*redis.IntCmd, len(members))
	_, _ = r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range members {
			exists[i] = p.Exists(ctx, r.sessionKey(id))
		}
		return nil
	})
	var live []string
	var stale []any
	for i, c := range exists {
		n, err := c.Result()
		if err != nil {
			return nil, fmt.Errorf("redis: sessions of %s: %w", socketID, err)
		}
		if n == 0 {
			stale = append(stale, members[i])
		} else {
			live = append(live, members[i])
		}
	}
	if len(stale) > 0 {
		if err := r.rdb.SRem(ctx, sock, stale...).Err(); err != nil {
			r.log.Warn("redis: sessions of socket: drop stale ids", "socket_id", socketID, "err", err)
		}
	}
	slices.Sort(live)
	return live, nil
}

// presenceField is an entry's field in its topic's hash and index.
func presenceField(owner, key string) string { return owner + "\x00" + key }

// presenceBody encodes e without its At: `{"k":…,"o":…,"m":…` (no closing
// brace). The put script appends `,"at":<At>}`, so that it can keep the At
// of the entry it replaces as a string: Lua numbers are float64 and would
// round unix nanoseconds.
func presenceBody(e PresenceEntry) (string, error) {
	b, err := json.Marshal(struct {
		Key   string          `json:"k"`
		Owner string          `json:"o"`
		Meta  json.RawMessage `json:"m,omitempty"`
	}{e.Key, e.Owner, e.Meta})
	if err != nil {
		return "", err
	}
	return string(b[:len(b)-1]), nil
}

func decodePresence(v string) (PresenceEntry, error) {
	var e PresenceEntry
	if err := json.Unmarshal([]byte(v), &e); err != nil {
		return e, fmt.Errorf("decode presence: %w", err)
	}
	return e, nil
}

// putPresenceScript replaces or adds an entry, keeping the replaced entry's
// At (read from the end of its JSON, as text), indexes its field, refreshes
// both keys' TTL and returns the replaced entry (nil if none).
//
// KEYS: hash, index. ARGV: field, body, at, ttl ms.
var putPresenceScript = redis.NewScript(`
local old = redis.call('HGET', KEYS[1], ARGV[1])
local at = ARGV[3]
if old then
  local oldAt = string.match(old, ',"at":(%-?%d+)}$')
  if oldAt then at = oldAt end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ',"at":' .. at .. '}')
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return old
`)

// PutPresence implements PresenceStore. One round trip (a script on the
// topic's two keys).
func (r *RedisStore) PutPresence(ctx context.Context, topic string, e PresenceEntry) (*PresenceEntry, error) {
	body, err := presenceBody(e)
	if err != nil {
		return nil, fmt.Errorf("redis: put presence in %s: encode: %w", topic, err)
	}
	hash, index := r.presenceKeys(topic)
	old, err := putPresenceScript.Run(ctx, r.rdb, []string{hash, index},
		presenceField(e.Owner, e.Key), body, strconv.FormatInt(e.At, 10), presenceTTL.Milliseconds()).Text()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("redis: put presence in %s: %w", topic, err)
	}
	prev, err := decodePresence(old)
	if err != nil {
		return nil, fmt.Errorf("redis: put presence in %s: %w", topic, err)
	}
	return &prev, nil
}

// removePresenceScript removes and returns every entry of one owner: its
// fields are the index range [owner+"\x00", owner+"\x01"). Being one
// script, racing removers each get an entry at most once.
//
// KEYS: hash, index. ARGV: range start, range end (ZRANGEBYLEX syntax).
var removePresenceScript = redis.NewScript(`
local fields = redis.call('ZRANGEBYLEX', KEYS[2], ARGV[1], ARGV[2])
local out = {}
for _, f in ipairs(fields) do
  local v = redis.call('HGET', KEYS[1], f)
  if v then
    out[#out + 1] = v
    redis.call('HDEL', KEYS[1], f)
  end
  redis.call('ZREM', KEYS[2], f)
end
return out
`)

// RemovePresence implements PresenceStore. One round trip; O(the owner's
// entries), whatever the size of the topic.
func (r *RedisStore) RemovePresence(ctx context.Context, topic, owner string) ([]PresenceEntry, error) {
	hash, index := r.presenceKeys(topic)
	vals, err := removePresenceScript.Run(ctx, r.rdb, []string{hash, index},
		"["+owner+"\x00", "("+owner+"\x01").StringSlice()
	if err != nil {
		return nil, fmt.Errorf("redis: remove presence in %s: %w", topic, err)
	}
	var out []PresenceEntry
	for _, v := range vals {
		e, err := decodePresence(v)
		if err != nil {
			// Removed all the same; the others are still announced.
			r.log.Error("redis: remove presence: skipping undecodable entry", "topic", topic, "owner", owner, "err", err)
			continue
		}
		out = append(out, e)
	}
	sortEntries(out)
	return out, nil
}

// ListPresence implements PresenceStore. One round trip (HGETALL).
func (r *RedisStore) ListPresence(ctx context.Context, topic string) ([]PresenceEntry, error) {
	hash, _ := r.presenceKeys(topic)
	vals, err := r.rdb.HGetAll(ctx, hash).Result()
	if err != nil {
		return nil, fmt.Errorf("redis: list presence in %s: %w", topic, err)
	}
	out := make([]PresenceEntry, 0, len(vals))
	for _, v := range vals {
		e, err := decodePresence(v)
		if err != nil {
			return nil, fmt.Errorf("redis: list presence in %s: %w", topic, err)
		}
		out = append(out, e)
	}
	sortEntries(out)
	return out, nil
}

// isNoScript reports a script missing from the server's cache: nothing ran.
func isNoScript(err error) bool {
	return err != nil && (errors.Is(err, redis.ErrNoScript) || redis.HasErrorPrefix(err, "NOSCRIPT"))
}
