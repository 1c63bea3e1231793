package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"strings"
)

// SplitFrames cuts a request body into frames, as the transports receive
// them. An application/x-ndjson body is one frame per line (phoenix.js's
// batches); blank lines are skipped. Any other body is one frame, as in
// Phoenix, unless jsonList is set and the body is a JSON array whose first
// element is itself an array or object: then each element is a frame (the
// SSE transport's "JSON array of messages").
//
// Phoenix reads an ndjson line that does not start with "[" as a base64
// binary frame; Sluice does not support binary payloads and says so, and it
// also takes V1 JSON objects, one per line.
func SplitFrames(contentType string, body []byte, jsonList bool) ([][]byte, error) {
	mediaType, _, _ := mime.ParseMediaType(contentType)
	if mediaType != "application/x-ndjson" {
		body = bytes.TrimSpace(body)
		if len(body) == 0 {
			return nil, errors.New("empty body: POST one JSON frame, or application/x-ndjson lines")
		}
		if jsonList && len(body) > 1 && body[0] == '[' {
			if rest := bytes.TrimSpace(body[1:]); len(rest) > 0 && (rest[0] == '[' || rest[0] == '{') {
				var list []json.RawMessage
				if err := json.Unmarshal(body, &list); err != nil {
					return nil, fmt.Errorf("body is not a JSON array of frames: %v", err)
				}
				frames := make([][]byte, len(list))
				for i, f := range list {
					frames[i] = f
				}
				return frames, nil
			}
		}
		if i := bytes.IndexByte(body, '\n'); i > 0 && json.Valid(bytes.TrimSpace(body[:i])) && !json.Valid(body) {
			// Lines of JSON sent as one frame (curl's default content
			// type): say which content type takes them.
			return nil, errors.New("the body holds several lines of JSON: send one frame per line with Content-Type: application/x-ndjson (curl -H 'content-type: application/x-ndjson'); nothing was applied")
		}
		return [][]byte{body}, nil
	}
	var frames [][]byte
	for i, line := range strings.Split(string(body), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "":
			continue
		case line[0] == '[' || line[0] == '{':
			frames = append(frames, []byte(line))
		default:
			return nil, fmt.Errorf("line %d: binary (base64) frames are not supported; send JSON frames; nothing was applied", i+1)
		}
	}
	if len(frames) == 0 {
		return nil, errors.New("empty batch: no frames in the body")
	}
	return frames, nil
}
