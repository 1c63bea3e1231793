package topics

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisOptions configures a RedisBroker. The zero value is usable.
type RedisOptions struct {
	// Prefix starts every key and the wake-up channel name; "sluice:" if
	// empty. Brokers that must not see each other's topics use different
	// prefixes. A prefix should not contain "{" or "}": the topic's hash tag
	// must be the first one in each key (a prefix holding a whole non-empty
	// tag, such as "{sluice}:", also works, and puts every key on one slot).
	Prefix string
	// MaxLen is the number of records kept per topic; 1000 if <= 0.
	MaxLen int
	// ByteBudgets bound in bytes the logs of the topics they select (the
	// first budget whose prefix a topic has applies); see ByteBudget.
	ByteBudgets []ByteBudget
	// Retention is how long a topic's log is kept after its last publish; an
	// hour if <= 0. The topic's sequence counter is kept ten times longer
	// (and at least a day) so that a log forgotten and created again goes on
	// numbering above its old records.
	Retention time.Duration
	// Logger receives the receiver's connection problems; slog.Default() if
	// nil.
	Logger *slog.Logger
}

// RedisBroker is a Broker whose logs live in Redis, shared by every instance
// using the same Redis and prefix. It works on a standalone server, through
// Sentinel and on a Cluster.
//
// Each topic has two keys under one hash tag, so that each script touches a
// single Cluster slot: "<prefix>{<topic>}:seq", the sequence counter, and
// "<prefix>{<topic>}:log", a Redis stream whose entry IDs are "<seq>-0" and
// whose field "d" holds the record. A topic with a byte budget has a third,
// "<prefix>{<topic>}:size": "<bytes> <seq>", the bytes of the records in the
// log as of the publish that took the counter to seq, written by that publish
// with the log's TTL. A publish that finds it stale (another seq, as after a
// publish by an instance without the budget) or missing counts the log again.
// In the tag, "%", "{" and "}" of the topic
// are percent-encoded (and the empty topic is written "%"), so that no topic
// name can end the tag early or leave it empty.
//
// Publish, Read and Head are one Lua script each: one command and one round
// trip whatever the number of records or of subscribers. A publish also
// PUBLISHes one message on the channel "<prefix>wake", heard by every
// instance's Run, which wakes that instance's listeners of the topic. The
// message is the publishing broker's 16-character id, the topic's new last
// Seq and the topic, separated by spaces; a broker ignores its own messages,
// having woken its listeners already.
//
// ReadMany answers a reader woken by a publish from the records another
// local reader of the same topic just read, when they reach the announced
// Seq: one broadcast to many subscribers on an instance costs that instance
// one read of Redis, not one per subscriber.
//
// Run must be running for listeners to hear publishes made by other
// instances.
type RedisBroker struct {
	client    redis.UniversalClient
	hub       *Hub
	log       *slog.Logger
	prefix    string
	channel   string
	id        string // this broker's id in wake-up messages
	maxLen    int
	budgets   []ByteBudget
	logTTL    time.Duration
	seqTTL    time.Duration
	pingEvery time.Duration

	running atomic.Bool

	mu sync.Mutex
	// watched holds every topic listened to on this broker, possibly with
	// some nobody listens to any more (pruned as it grows), so that Run can
	// wake every listener after a reconnect: the Hub cannot list its topics.
	watched map[string]struct{}
	pruneAt int
	// tails answers many local readers of a broadcast with one read.
	tails *tails
}

var _ Broker = (*RedisBroker)(nil)

// NewRedisBroker returns a broker storing its logs through client. The
// client stays the caller's: the broker never closes it.
func NewRedisBroker(client redis.UniversalClient, opts RedisOptions) *RedisBroker {
	if opts.Prefix == "" {
		opts.Prefix = "sluice:"
	}
	if opts.MaxLen <= 0 {
		opts.MaxLen = 1000
	}
	if opts.Retention <= 0 {
		opts.Retention = time.Hour
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	var id [8]byte
	_, _ = rand.Read(id[:]) // never fails (crypto/rand documents it)
	return &RedisBroker{
		client:    client,
		hub:       NewHub(),
		log:       opts.Logger,
		prefix:    opts.Prefix,
		channel:   opts.Prefix + "wake",
		id:        hex.EncodeToString(id[:]),
		maxLen:    opts.MaxLen,
		budgets:   slices.Clone(opts.ByteBudgets),
		logTTL:    opts.Retention,
		seqTTL:    max(10*opts.Retention, 24*time.Hour),
		pingEvery: 5 * time.Second,
		watched:   make(map[string]struct{}),
		pruneAt:   1024,
		tails:     newTails(),
	}
}

// Lua numbers are doubles: sequences (microseconds since 1970, about 1.8e15)
// are exact below 2^53, but tostring and ".." print large numbers in exponent
// form, so numbers become strings only through string.format("%d", n), and
// sequences read from Redis stay strings where they need no arithmetic.

// createSeq starts the counter of a topic that has none: at the current time
// (ARGV[1], from Go, in microseconds) or, should the counter have vanished
// while the log stayed (eviction), at the newest record still in the log, so
// that XADD's IDs keep growing and no old Seq is reused.
const createSeq = `
local function create(seqkey, logkey, start)
  local top = redis.call('XREVRANGE', logkey, '+', '-', 'COUNT', 1)
  if #top > 0 then
    local s = string.match(top[1][1], '^%d+')
    if tonumber(s) > tonumber(start) then start = s end
  end
  redis.call('SET', seqkey, start)
  return start
end
`

// logSize returns the bytes of the records in a log whose counter is at seq
// (a string): the size key's if a publish at seq wrote it, else counted.
const logSize = `
local function logsize(logkey, sizekey, seq)
  if redis.call('EXISTS', logkey) == 0 then return 0 end
  local v = redis.call('GET', sizekey)
  if v then
    local size, at = string.match(v, '^(%d+) (%d+)$')
    if size and at == seq then return tonumber(size) end
  end
  local size, start = 0, '-'
  while true do
    local entries = redis.call('XRANGE', logkey, start, '+', 'COUNT', 100)
    for _, e in ipairs(entries) do size = size + #e[2][2] end
    if #entries < 100 then return size end
    start = string.match(entries[#entries][1], '^%d+') .. '-1'
  end
end
`

// trimLog drops the oldest entries of a log until it holds at most maxlen
// entries and budget bytes (or a single entry), given the bytes it holds, and
// returns the bytes left. It reads the entries it drops, in growing chunks,
// to know their sizes: the cost follows the bytes dropped, which were the
// bytes published.
const trimLog = `
local function trim(logkey, size, maxlen, budget)
  local count = redis.call('XLEN', logkey)
  local start, cut, chunk = '-', nil, math.max(count - maxlen, 1)
  while count > 1 and (count > maxlen or size > budget) do
    local entries = redis.call('XRANGE', logkey, start, '+', 'COUNT', chunk)
    if #entries == 0 then break end
    for _, e in ipairs(entries) do
      if count <= 1 or (count <= maxlen and size <= budget) then break end
      size = size - #e[2][2]
      count = count - 1
      cut = string.match(e[1], '^%d+')
    end
    start = cut .. '-1'
    chunk = math.min(2 * chunk, 128)
  end
  if cut then redis.call('XTRIM', logkey, 'MINID', '=', cut .. '-1') end
  return size
end
`

// publishScript appends ARGV[9..] to the log. KEYS: seq, log, size. ARGV:
// start, maxlen, log TTL (ms), seq TTL (ms), wake channel, broker id, topic,
// byte budget (0: none), records... The wake-up message is "<broker id>
// <last seq> <topic>". Records that the bounds would drop at once (the
// oldest of a batch longer than maxlen or larger than the budget) are not
// written; their Seqs are still used.
var publishScript = newScript(createSeq + logSize + trimLog + `
local n = #ARGV - 8
local maxlen = tonumber(ARGV[2])
local budget = tonumber(ARGV[8])
local prev = redis.call('GET', KEYS[1])
if not prev then prev = create(KEYS[1], KEYS[2], ARGV[1]) end
local last = redis.call('INCRBY', KEYS[1], n)
if n > 0 and budget > 0 then
  local first, lo = last - n, n
  local added = #ARGV[8 + n]
  while lo > 1 and n - lo + 1 < maxlen and added + #ARGV[7 + lo] <= budget do
    lo = lo - 1
    added = added + #ARGV[8 + lo]
  end
  local size = 0
  if lo > 1 then
    -- records of the batch are skipped: older ones go too (a log is contiguous)
    redis.call('DEL', KEYS[2])
  else
    size = logsize(KEYS[2], KEYS[3], prev)
  end
  for i = lo, n do
    redis.call('XADD', KEYS[2], string.format('%d-0', first + i), 'd', ARGV[8 + i])
  end
  size = trim(KEYS[2], size + added, maxlen, budget)
  redis.call('SET', KEYS[3], string.format('%d %d', size, last))
elseif n > 0 then
  local first = last - n
  for i = math.max(1, n - maxlen + 1), n do
    redis.call('XADD', KEYS[2], string.format('%d-0', first + i), 'd', ARGV[8 + i])
  end
  redis.call('XTRIM', KEYS[2], 'MAXLEN', '=', maxlen)
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if budget > 0 then redis.call('PEXPIRE', KEYS[3], ARGV[3]) end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6] .. ' ' .. string.format('%d', last) .. ' ' .. ARGV[7])
return last
`)

// readScript returns {head, entries}: the counter ("" if the topic is
// unknown) and the log entries from ID ARGV[1] on, at most ARGV[2] of them
// (all if "0"). Reading both in one script keeps them consistent. With
// ARGV[3] = "1" (ReadRequest.Acked), it then drops the entries before
// ARGV[1] (unless ARGV[1] is past the head: a cursor never handed out
// acknowledges nothing), keeping the size key right, and deletes the log and its size key
// when nothing is left (the counter stays). KEYS: seq, log, size.
var readScript = newScript(`
local h = redis.call('GET', KEYS[1])
if not h then return {'', {}} end
local entries
if ARGV[2] == '0' then
  entries = redis.call('XRANGE', KEYS[2], ARGV[1], '+')
else
  entries = redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])
end
if ARGV[3] == '1' and tonumber(string.match(ARGV[1], '^%d+')) <= tonumber(h) then
  local acked = redis.call('XRANGE', KEYS[2], '-', string.match(ARGV[1], '^%d+') .. '-0')
  if #acked > 0 then
    if redis.call('XLEN', KEYS[2]) == #acked then
      redis.call('DEL', KEYS[2], KEYS[3])
    else
      local dropped = 0
      for _, e in ipairs(acked) do dropped = dropped + #e[2][2] end
      redis.call('XTRIM', KEYS[2], 'MINID', '=', ARGV[1])
      local v = redis.call('GET', KEYS[3])
      if v then
        local size, at = string.match(v, '^(%d+) (%d+)$')
        if size and at == h then
          redis.call('SET', KEYS[3], string.format('%d %s', tonumber(size) - dropped, at), 'KEEPTTL')
        end
      end
    end
  end
end
return {h, entries}
`)

// headScript returns the counter, creating it if needed, and refreshes its
// TTL. KEYS: seq, log. ARGV: start, seq TTL (ms).
var headScript = newScript(createSeq + `
local h = redis.call('GET', KEYS[1])
if not h then h = create(KEYS[1], KEYS[2], ARGV[1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return h
`)

// luaScript is a Lua script with its source, which redis.Script keeps to
// itself (runOnce needs it for EVAL).
type luaScript struct {
	*redis.Script
	src string
}

func newScript(src string) luaScript { return luaScript{redis.NewScript(src), src} }

var tagEscaper = strings.NewReplacer("%", "%25", "{", "%7B", "}", "%7D")

// keys returns the counter, log and size keys of topic.
func (b *RedisBroker) keys(topic string) []string {
	tag := "%" // never the escape of a non-empty topic, and not an empty tag
	if topic != "" {
		tag = tagEscaper.Replace(topic)
	}
	base := b.prefix + "{" + tag + "}:"
	return []string{base + "seq", base + "log", base + "size"}
}

// clockStart is the start of a new counter: the clock in microseconds, the scale at
// which a forgotten topic's records could not have outrun it (see
// MemoryBroker.logLocked).
func clockStart() string { return strconv.FormatInt(time.Now().UnixMicro(), 10) }

// Publish implements Broker. It is one command, never retried by go-redis
// after it may have reached Redis: a retry could append the records twice.
// On an error the records may or may not have been appended.
func (b *RedisBroker) Publish(ctx context.Context, topic string, data ...[]byte) (uint64, error) {
	args := make([]any, 0, 8+len(data))
	args = append(args, clockStart(), b.maxLen, b.logTTL.Milliseconds(), b.seqTTL.Milliseconds(), b.channel, b.id, topic, budgetFor(b.budgets, topic))
	for _, d := range data {
		args = append(args, d) // written to the connection before Run returns: no copy needed
	}
	v, err := b.runOnce(ctx, publishScript, b.keys(topic), args)
	last, ok := v.(int64)
	if err == nil && ok && last > 0 {
		// Announced before the wake-up, which readers take as the news.
		b.tails.announce(topic, uint64(last))
	} else {
		b.tails.doubt(topic)
	}
	// Wake even after an error, as the records may be in: a spurious wake-up
	// costs a read, a missed one a whole poll.
	b.hub.Wake(topic)
	if err != nil {
		return 0, fmt.Errorf("publish %s: %w", topic, err)
	}
	if !ok || last <= 0 {
		return 0, fmt.Errorf("publish %s: unexpected reply %#v", topic, v)
	}
	return uint64(last), nil
}

// noRetryCmd is a command that go-redis must not send again after a network
// error (its default is up to 3 retries, even when the command was written
// and only the reply was lost). Redirections (MOVED, ASK) are still followed.
type noRetryCmd struct{ *redis.Cmd }

func (noRetryCmd) NoRetry() bool { return true }

// runOnce runs script as EVALSHA, falling back to EVAL if Redis does not have
// it cached (which executed nothing), without go-redis retries.
func (b *RedisBroker) runOnce(ctx context.Context, s luaScript, keys []string, args []any) (any, error) {
	run := func(name, body string) (any, error) {
		a := make([]any, 0, 3+len(keys)+len(args))
		a = append(a, name, body, len(keys))
		for _, k := range keys {
			a = append(a, k)
		}
		a = append(a, args...)
		cmd := redis.NewCmd(ctx, a...)
		err := b.client.Process(ctx, noRetryCmd{cmd})
		return cmd.Val(), err
	}
	v, err := run("evalsha", s.Hash())
	if isNoScript(err) {
		v, err = run("eval", s.src)
	}
	return v, err
}

func isNoScript(err error) bool {
	return err != nil && (errors.Is(err, redis.ErrNoScript) || redis.HasErrorPrefix(err, "NOSCRIPT"))
}

// Read implements Broker. It is one command: a script reading the counter
// and the log together.
func (b *RedisBroker) Read(ctx context.Context, topic string, after uint64, limit int) (Batch, error) {
	v, err := readScript.Run(ctx, b.client, b.keys(topic), readArgs(after, limit, false)...).Result()
	if err != nil {
		return Batch{}, fmt.Errorf("read %s: %w", topic, err)
	}
	batch, err := decodeBatch(v, after)
	if err != nil {
		return Batch{}, fmt.Errorf("read %s: %w", topic, err)
	}
	return batch, nil
}

// ReadMany performs several Reads in one round trip (a pipeline; on a
// Cluster, one per node, in parallel). The batches are in the order of reqs.
// Reads of records that a publish announced and another local reader
// already fetched are answered from memory (see RedisBroker).
func (b *RedisBroker) ReadMany(ctx context.Context, reqs []ReadRequest) ([]Batch, error) {
	if len(reqs) == 0 {
		return nil, nil
	}
	out := make([]Batch, len(reqs))
	var misses []int
	for i, r := range reqs {
		var ok bool
		// An acknowledging read goes to Redis, which drops what it acks.
		if r.Acked {
			misses = append(misses, i)
		} else if out[i], ok = b.tails.lookup(r); !ok {
			misses = append(misses, i)
		}
	}
	if len(misses) == 0 {
		return out, nil
	}
	// Readers woken together by one broadcast: one of them reads each topic
	// while the others wait for it and look again. Under a stream of
	// publishes a look can miss again (a newer Seq was announced meanwhile),
	// so this goes a few rounds before reading anyway. A reader never waits
	// while it holds a fill, so readers of several topics cannot deadlock.
	var fills []func()
	defer func() {
		for _, done := range fills {
			done()
		}
	}()
	for range maxFillRounds {
		for _, i := range misses {
			if done, ok := b.tails.startFill(reqs[i].Topic); ok {
				fills = append(fills, done)
			}
		}
		if len(fills) > 0 {
			break // read them all now
		}
		for _, i := range misses {
			b.tails.waitFill(reqs[i].Topic)
		}
		still := misses[:0]
		for _, i := range misses {
			var ok bool
			if reqs[i].Acked {
				still = append(still, i)
			} else if out[i], ok = b.tails.lookup(reqs[i]); !ok {
				still = append(still, i)
			}
		}
		if misses = still; len(misses) == 0 {
			return out, nil
		}
	}
	read := make([]ReadRequest, len(misses))
	for j, i := range misses {
		read[j] = reqs[i]
	}
	batches, err := b.readRedis(ctx, read)
	if err != nil {
		return nil, err
	}
	for j, i := range misses {
		out[i] = batches[j]
		b.tails.store(reqs[i], batches[j], b.hub.Listeners(reqs[i].Topic) > 1)
	}
	return out, nil
}

// maxFillRounds bounds how many times a reader waits for another's read of
// the same topic before it reads itself.
const maxFillRounds = 4

// readRedis performs Reads in one round trip.
func (b *RedisBroker) readRedis(ctx context.Context, reqs []ReadRequest) ([]Batch, error) {
	cmds := make([]*redis.Cmd, len(reqs))
	_, _ = b.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, r := range reqs {
			cmds[i] = readScript.EvalSha(ctx, p, b.keys(r.Topic), readArgs(r.After, r.Limit, r.Acked)...)
		}
		return nil
	})
	// Scripts missing from the server's cache (after a restart or on a node
	// that never ran them): a second round trip with their source.
	var missing []int
	for i, c := range cmds {
		if isNoScript(c.Err()) {
			missing = append(missing, i)
		}
	}
	if len(missing) > 0 {
		_, _ = b.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, i := range missing {
				r := reqs[i]
				cmds[i] = readScript.Eval(ctx, p, b.keys(r.Topic), readArgs(r.After, r.Limit, r.Acked)...)
			}
			return nil
		})
	}
	out := make([]Batch, len(reqs))
	for i, c := range cmds {
		v, err := c.Result()
		if err == nil {
			out[i], err = decodeBatch(v, reqs[i].After)
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", reqs[i].Topic, err)
		}
	}
	return out, nil
}

// readArgs returns readScript's arguments. Every entry ID is "<seq>-0", so
// the entries after the cursor are those from "<after>-1" on: an inclusive
// start every Redis version accepts, which cannot overflow.
func readArgs(after uint64, limit int, acked bool) []any {
	ack := "0"
	if acked {
		ack = "1"
	}
	return []any{strconv.FormatUint(after, 10) + "-1", max(limit, 0), ack}
}

// decodeBatch turns readScript's reply into a Batch, with the gap rules of
// the memory broker.
func decodeBatch(v any, after uint64) (Batch, error) {
	reply, ok := v.([]any)
	if !ok || len(reply) != 2 {
		return Batch{}, fmt.Errorf("unexpected reply %#v", v)
	}
	hs, _ := reply[0].(string)
	if hs == "" {
		// Unknown topic: a cursor into it points at records now forgotten.
		return Batch{Gap: after > 0}, nil
	}
	head, err := strconv.ParseUint(hs, 10, 64)
	if err != nil {
		return Batch{}, fmt.Errorf("bad sequence %q", hs)
	}
	batch := Batch{Head: head}
	if after >= head {
		batch.Gap = after > head // a cursor from the future: the log was recreated
		return batch, nil
	}
	entries, _ := reply[1].([]any)
	if len(entries) == 0 {
		batch.Gap = true // records after the cursor were published and dropped
		return batch, nil
	}
	batch.Records = make([]Record, 0, len(entries))
	for _, e := range entries {
		r, err := decodeEntry(e)
		if err != nil {
			return Batch{}, err
		}
		batch.Records = append(batch.Records, r)
	}
	batch.Gap = batch.Records[0].Seq > after+1
	return batch, nil
}

// decodeEntry turns a stream entry, [id, [field, value, ...]], into a Record.
func decodeEntry(e any) (Record, error) {
	pair, ok := e.([]any)
	if !ok || len(pair) != 2 {
		return Record{}, fmt.Errorf("unexpected stream entry %#v", e)
	}
	id, _ := pair[0].(string)
	s, _, _ := strings.Cut(id, "-")
	seq, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return Record{}, fmt.Errorf("bad stream entry id %q", id)
	}
	fields, _ := pair[1].([]any)
	for i := 0; i+1 < len(fields); i += 2 {
		if f, _ := fields[i].(string); f == "d" {
			d, ok := fields[i+1].(string)
			if !ok {
				break
			}
			return Record{Seq: seq, Data: []byte(d)}, nil
		}
	}
	return Record{}, fmt.Errorf("stream entry %s has no field d", id)
}

// Head implements Broker. It creates the topic's counter if needed, so that
// the position it returns stays valid for a later Read, and keeps it for the
// counter's TTL from now. It is one command.
func (b *RedisBroker) Head(ctx context.Context, topic string) (uint64, error) {
	v, err := headScript.Run(ctx, b.client, b.keys(topic), clockStart(), b.seqTTL.Milliseconds()).Result()
	return headReply(topic, v, err)
}

// headReply is what Head returns for the head script's reply v (or err).
func headReply(topic string, v any, err error) (uint64, error) {
	if err != nil {
		return 0, fmt.Errorf("head %s: %w", topic, err)
	}
	s, _ := v.(string)
	h, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("head %s: unexpected reply %#v", topic, v)
	}
	return h, nil
}

// Client returns the client the broker sends through, so that a store on
// the same client can send one of the broker's commands with its own
// (HeadPipelined).
func (b *RedisBroker) Client() redis.UniversalClient { return b.client }

// HeadPipelined queues Head of topic in p, a pipeline of the broker's
// client, so that a caller saves a round trip by sending it with commands
// of its own (a new session's mailbox head with the session's creation).
// The returned function, called after p ran, returns what Head would. If
// the script was not in Redis's cache (which ran nothing), it runs Head on
// its own: one round trip more, once per script cache.
func (b *RedisBroker) HeadPipelined(ctx context.Context, p redis.Pipeliner, topic string) func() (uint64, error) {
	cmd := headScript.EvalSha(ctx, p, b.keys(topic), clockStart(), b.seqTTL.Milliseconds())
	return func() (uint64, error) {
		v, err := cmd.Result()
		if isNoScript(err) {
			return b.Head(ctx, topic)
		}
		return headReply(topic, v, err)
	}
}

// Delete implements Broker. It removes the log (and its size) but keeps the
// counter (until its TTL), so that a topic used again goes on numbering
// above its old records and old cursors read as a Gap.
func (b *RedisBroker) Delete(ctx context.Context, topic string) error {
	k := b.keys(topic)
	if err := b.client.Del(ctx, k[1], k[2]).Err(); err != nil { // one slot: one hash tag
		return fmt.Errorf("delete %s: %w", topic, err)
	}
	b.tails.forget(topic)
	return nil
}

// Listen implements Broker.
func (b *RedisBroker) Listen(topics ...string) *Listener {
	l := b.hub.Listen(topics...)
	b.mu.Lock()
	for _, t := range topics {
		b.watched[t] = struct{}{}
		b.tails.watch(t)
	}
	if len(b.watched) > b.pruneAt {
		// Forget the topics nobody listens to any more; doubling the bound
		// keeps the cost of pruning constant per Listen.
		for t := range b.watched {
			if !b.hub.Interested(t) {
				delete(b.watched, t)
			}
		}
		b.pruneAt = max(2*len(b.watched), 1024)
		b.tails.prune(func(t string) bool { _, ok := b.watched[t]; return ok })
	}
	b.mu.Unlock()
	return l
}

// wakeAll wakes every listener of this broker.
func (b *RedisBroker) wakeAll() {
	b.mu.Lock()
	topics := make([]string, 0, len(b.watched))
	for t := range b.watched {
		topics = append(topics, t)
	}
	b.mu.Unlock()
	for _, t := range topics {
		b.hub.Wake(t)
	}
}

// Backoff between attempts to subscribe to the wake-up channel.
const (
	minResubscribeDelay = 100 * time.Millisecond
	maxResubscribeDelay = 5 * time.Second
)

// Run receives the wake-ups published by every instance and wakes this
// instance's listeners, until ctx is done; it then returns nil. It
// resubscribes by itself whenever the subscription is lost (Redis restarted,
// a failover, a connection that stopped answering pings), and each time it
// is subscribed again it wakes every local listener, since a wake-up
// published meanwhile was lost; readers then look at the logs, which lost
// nothing. Run returns an error only if it is already running.
func (b *RedisBroker) Run(ctx context.Context) error {
	if !b.running.CompareAndSwap(false, true) {
		return errors.New("topics: RedisBroker.Run is already running")
	}
	defer b.running.Store(false)
	delay := minResubscribeDelay
	for {
		subscribed, err := b.receive(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if subscribed {
			delay = minResubscribeDelay
		}
		b.log.Warn("topics: redis wake-up subscription lost, resubscribing", "channel", b.channel, "err", err, "retry_in", delay)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		delay = min(2*delay, maxResubscribeDelay)
	}
}

// receive subscribes to the wake-up channel and handles its messages until
// the connection fails or ctx is done. It reports whether the subscription
// was confirmed. Every failure ends the PubSub rather than leaving go-redis
// to reconnect it, so that one place (Run) paces the retries and a
// connection that went silent is replaced too.
func (b *RedisBroker) receive(ctx context.Context) (subscribed bool, err error) {
	ps := b.client.Subscribe(ctx)
	// A blocked receive only notices ctx when the PubSub is closed. Wait for
	// that close to finish, so that nothing of Run outlives it.
	closed := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = ps.Close()
		close(closed)
	})
	defer func() {
		if stop() {
			_ = ps.Close()
		} else {
			<-closed
		}
	}()
	if err := ps.Subscribe(ctx, b.channel); err != nil {
		return false, fmt.Errorf("subscribe: %w", err)
	}
	pinged := false
	for {
		msg, err := ps.ReceiveTimeout(ctx, b.pingEvery)
		if err != nil {
			if ctx.Err() != nil {
				return subscribed, nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && !pinged {
				// Quiet for a while: make sure the connection still answers.
				if err := ps.Ping(ctx); err != nil {
					return subscribed, fmt.Errorf("ping: %w", err)
				}
				pinged = true
				continue
			}
			if pinged {
				return subscribed, fmt.Errorf("no answer to a ping within %v: %w", b.pingEvery, err)
			}
			return subscribed, err
		}
		pinged = false
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" && m.Channel == b.channel {
				subscribed = true
				b.resubscribed(ctx)
			}
		case *redis.Message:
			b.wake(m.Payload)
		}
	}
}

// resubscribed runs when the wake-up subscription is (again) in place.
func (b *RedisBroker) resubscribed(ctx context.Context) {
	// A restarted server has an empty script cache: load the scripts (on
	// every shard of a Cluster) before the woken readers need them, rather
	// than make their calls pay a second round trip. Best effort.
	for _, s := range []luaScript{publishScript, readScript, headScript} {
		if err := s.Load(ctx, b.client).Err(); err != nil && ctx.Err() == nil {
			b.log.Debug("topics: loading a script into redis", "err", err)
		}
	}
	// Publishes made meanwhile were not announced: the woken readers must
	// not be told from memory that nothing is new.
	b.tails.doubtAll()
	b.wakeAll()
}

// wake handles a wake-up message: "<broker id> <last seq> <topic>".
func (b *RedisBroker) wake(payload string) {
	id, rest, ok := strings.Cut(payload, " ")
	seqText, topic, ok2 := strings.Cut(rest, " ")
	seq, err := strconv.ParseUint(seqText, 10, 64)
	if !ok || !ok2 || err != nil || len(id) != len(b.id) {
		b.log.Debug("topics: malformed wake-up message", "channel", b.channel, "payload", payload)
		return
	}
	if id == b.id {
		return // our own publish: announced and woken in Publish
	}
	b.tails.announce(topic, seq)
	b.hub.Wake(topic)
}
