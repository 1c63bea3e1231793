package gateway

import (
	"context"
	"encoding/json"
	"testing"
)

func TestReceiveOnlyTopics(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Router.Add("news:*", ReceiveOnly{}) })
	c := h.connect("1", "2.0.0")
	c.send(`["1","1","news:sports","phx_join",{}]`)
	expectFrames(t, c.poll(), `["1","1","news:sports","phx_reply",{"status":"ok","response":{}}]`)
	if err := h.gw.Broadcast(context.Background(), "news:sports", "goal", json.RawMessage(`{"min":90}`)); err != nil {
		t.Fatal(err)
	}
	expectFrames(t, c.poll(), `[null,null,"news:sports","goal",{"min":90}]`)
	c.send(`["1","2","news:sports","shout",{}]`)
	expectFrames(t, c.poll(), `["1","2","news:sports","phx_reply",{"status":"error","response":{"reason":"*"}}]`)
	// No presence: nothing was tracked.
	list, err := h.store.ListPresence(context.Background(), "news:sports")
	if err != nil || len(list) != 0 {
		t.Errorf("presence on a receive-only topic: %v %v", list, err)
	}
}
