package gateway

import "encoding/json"

// ReceiveOnly is the handler of open topics: any authenticated user may join
// one to receive what the server broadcasts there (POST /api/broadcast),
// with no presence and no history pushed at join; what a client pushes is
// refused, since nothing on the server would act on it.
type ReceiveOnly struct{}

// Join implements Handler: always accepted.
func (ReceiveOnly) Join(*Context, json.RawMessage) Reply { return Ok(nil) }

// HandleIn implements Handler: every push is refused with a reason.
func (ReceiveOnly) HandleIn(*Context, string, json.RawMessage) Reply {
	return Error(map[string]string{"reason": "receive-only topic: publish with POST /api/broadcast"})
}
