package chat

import (
	"cmp"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisStore is a Store shared by every instance through Redis
// (standalone, Sentinel or Cluster: every command touches one key).
//
// Keys, under the prefix:
//
//	room:<id>          the room's JSON
//	history:<room>     list of the room's messages' JSON, oldest first,
//	                   trimmed to the newest keepLast
//	message-id         the counter of message ids
//	join-attempts:<h>  a user's password attempts on a private room (h: a
//	                   hash of room and user), with the window as its TTL
//
// Rooms and histories are the app's data, so they have no TTL: a history is
// bounded by keepLast, and there is one per room that can be joined (the
// lobby and the rooms created through the API). Join attempts expire with
// their window.
type RedisStore struct {
	rdb      redis.UniversalClient
	prefix   string
	keepLast int
}

var _ Store = (*RedisStore)(nil)

// NewRedisStore returns a store on client keeping the last keepLast messages
// of each room (none if keepLast <= 0, as NewMemoryStore), its keys under
// prefix (default "sluice:chat:"). The caller owns client.
func NewRedisStore(client redis.UniversalClient, prefix string, keepLast int) *RedisStore {
	if prefix == "" {
		prefix = "sluice:chat:"
	}
	return &RedisStore{rdb: client, prefix: prefix, keepLast: keepLast}
}

func (s *RedisStore) roomKey(id string) string      { return s.prefix + "room:" + id }
func (s *RedisStore) historyKey(room string) string { return s.prefix + "history:" + room }
func (s *RedisStore) idKey() string                 { return s.prefix + "message-id" }
func (s *RedisStore) attemptsKey(room, user string) string {
	k := joinAttemptKey(room, user)
	return s.prefix + "join-attempts:" + hex.EncodeToString(k[:16])
}

// PutRoom implements Store. One round trip.
func (s *RedisStore) PutRoom(ctx context.Context, r Room) error {
	data, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("redis: put room %s: encode: %w", r.ID, err)
	}
	if err := s.rdb.Set(ctx, s.roomKey(r.ID), data, 0).Err(); err != nil {
		return fmt.Errorf("redis: put room %s: %w", r.ID, err)
	}
	return nil
}

// Room implements Store. One round trip.
func (s *RedisStore) Room(ctx context.Context, id string) (*Room, error) {
	data, err := s.rdb.Get(ctx, s.roomKey(id)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, ErrNoRoom
	} else if err != nil {
		return nil, fmt.Errorf("redis: room %s: %w", id, err)
	}
	r := &Room{}
	if err := json.Unmarshal(data, r); err != nil {
		return nil, fmt.Errorf("redis: room %s: decode: %w", id, err)
	}
	return r, nil
}

// AddMessage implements Store. Two round trips: INCR for the id, then RPUSH
// and LTRIM in one MULTI (one key), so the list never holds more than
// keepLast messages.
func (s *RedisStore) AddMessage(ctx context.Context, room string, m Mensaje) (Mensaje, error) {
	id, err := s.rdb.Incr(ctx, s.idKey()).Result()
	if err != nil {
		return Mensaje{}, fmt.Errorf("redis: add message to %s: new id: %w", room, err)
	}
	m.ID = id
	if s.keepLast <= 0 {
		return m, nil
	}
	data, err := json.Marshal(m)
	if err != nil {
		return Mensaje{}, fmt.Errorf("redis: add message to %s: encode: %w", room, err)
	}
	key := s.historyKey(room)
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.RPush(ctx, key, data)
		p.LTrim(ctx, key, int64(-s.keepLast), -1)
		return nil
	})
	if err != nil {
		return Mensaje{}, fmt.Errorf("redis: add message to %s: %w", room, err)
	}
	return m, nil
}

// LastMessages implements Store. One round trip (LRANGE). Two messages
// added at once may reach the list in the other order than their ids; the
// result is sorted by id so clients always see ids increasing.
func (s *RedisStore) LastMessages(ctx context.Context, room string, n int) ([]Mensaje, error) {
	if n <= 0 {
		return nil, nil
	}
	vals, err := s.rdb.LRange(ctx, s.historyKey(room), int64(-n), -1).Result()
	if err != nil {
		return nil, fmt.Errorf("redis: messages of %s: %w", room, err)
	}
	out := make([]Mensaje, 0, len(vals))
	for _, v := range vals {
		var m Mensaje
		if err := json.Unmarshal([]byte(v), &m); err != nil {
			return nil, fmt.Errorf("redis: messages of %s: decode: %w", room, err)
		}
		out = append(out, m)
	}
	slices.SortStableFunc(out, func(a, b Mensaje) int { return cmp.Compare(a.ID, b.ID) })
	return out, nil
}

// countAttempt increments a counter and starts its window if it has none
// (a new key, or one left without a TTL), in one step.
var countAttempt = redis.NewScript(`
local n = redis.call('INCR', KEYS[1])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
`)

// CountJoinAttempt implements Store. One round trip (a script on one key).
func (s *RedisStore) CountJoinAttempt(ctx context.Context, room, user string, window time.Duration) (int64, error) {
	n, err := countAttempt.Run(ctx, s.rdb, []string{s.attemptsKey(room, user)}, max(window.Milliseconds(), 1)).Int64()
	if err != nil {
		return 0, fmt.Errorf("redis: count a join attempt: %w", err)
	}
	return n, nil
}

// ClearJoinAttempts implements Store. One round trip.
func (s *RedisStore) ClearJoinAttempts(ctx context.Context, room, user string) error {
	if err := s.rdb.Del(ctx, s.attemptsKey(room, user)).Err(); err != nil {
		return fmt.Errorf("redis: clear join attempts: %w", err)
	}
	return nil
}
