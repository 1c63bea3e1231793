package gateway_test

import (
	"strings"
	"testing"

	"github.com/sluicegw/sluice/gateway"
)

// TestSplitFramesHintsAtNDJSON: two frames on two lines, POSTed without the
// ndjson content type (curl's default is form-urlencoded), are refused with
// an error that names the content type to use, not a JSON parser's
// "invalid character '[' after top-level value".
func TestSplitFramesHintsAtNDJSON(t *testing.T) {
	two := "[\"1\",\"1\",\"room:a\",\"phx_join\",{}]\n[null,\"2\",\"phoenix\",\"heartbeat\",{}]"
	for _, ct := range []string{"", "application/x-www-form-urlencoded", "application/json"} {
		_, err := gateway.SplitFrames(ct, []byte(two), false)
		if err == nil || !strings.Contains(err.Error(), "application/x-ndjson") {
			t.Errorf("content type %q: err %v; want a hint at application/x-ndjson", ct, err)
		}
	}
	if frames, err := gateway.SplitFrames("application/x-ndjson", []byte(two), false); err != nil || len(frames) != 2 {
		t.Errorf("ndjson: %d frames, %v", len(frames), err)
	}
	// One frame spread over lines is one frame, not a batch.
	pretty := "[\"1\",\"1\",\"room:a\",\"phx_join\",\n  {\"a\": 1}\n]"
	if frames, err := gateway.SplitFrames("application/json", []byte(pretty), false); err != nil || len(frames) != 1 {
		t.Errorf("a pretty-printed frame: %d frames, %v", len(frames), err)
	}
}
