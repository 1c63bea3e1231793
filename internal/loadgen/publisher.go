package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// publishTimeout bounds one publish. Publishes use their own context, not
// the window's: one in flight when the window closes completes and counts.
const publishTimeout = 15 * time.Second

// pacer spaces one publisher's sends at a fixed rate.
type pacer struct {
	interval time.Duration // 0: no pacing
	next     time.Time
	end      time.Time
	timer    *time.Timer
}

// newPacer paces rate sends per second from start to end; phase (0 to 1)
// offsets the first send by that fraction of the interval, so that
// publishers do not all send at once.
func newPacer(rate float64, start, end time.Time, phase float64) *pacer {
	p := &pacer{next: start, end: end}
	if rate > 0 {
		p.interval = time.Duration(float64(time.Second) / rate)
		p.next = start.Add(time.Duration(phase * float64(p.interval)))
	}
	return p
}

// wait blocks until the next send is due and reports whether to send: false
// once the window is over or ctx is done. A publisher that fell more than a
// second behind (a slow server) skips ahead rather than bursting.
func (p *pacer) wait(ctx context.Context) bool {
	if ctx.Err() != nil {
		return false
	}
	if p.interval > 0 {
		now := time.Now()
		if now.Sub(p.next) > time.Second {
			p.next = now
		}
		if !p.next.Before(p.end) {
			return false
		}
		if d := p.next.Sub(now); d > 0 {
			if p.timer == nil {
				p.timer = time.NewTimer(d)
			} else {
				p.timer.Reset(d)
			}
			select {
			case <-p.timer.C:
			case <-ctx.Done():
				return false
			}
		}
		p.next = p.next.Add(p.interval)
	}
	return time.Now().Before(p.end) && ctx.Err() == nil
}

// stop releases the pacer's timer.
func (p *pacer) stop() {
	if p.timer != nil {
		p.timer.Stop()
	}
}

// runPublisher is API publisher w: it broadcasts to the topics in turn
// (shared round-robin with the other publishers), each (publisher, topic)
// with its own sequence.
func (e *engine) runPublisher(ctx context.Context, w int, start, end time.Time) {
	cfg := e.cfg
	hc := e.pool.client(w)
	seq := make([]int64, cfg.Topics)
	pc := newPacer(cfg.Rate/float64(cfg.Publishers), start, end, float64(w)/float64(cfg.Publishers))
	defer pc.stop()
	var body []byte
	for pc.wait(ctx) && e.claim() {
		n := e.pubN.Add(1) - 1
		ti := int(n % int64(cfg.Topics))
		seq[ti]++
		base := cfg.URLs[int(n%int64(len(cfg.URLs)))]
		var err error
		if e.centrifugo {
			body = e.publishBody(body[:0], ti, w, seq[ti], time.Now().UnixNano())
			err = e.centrifugoPublish(hc, base+"/api/publish", body)
		} else {
			body = e.broadcastBody(body[:0], ti, w, seq[ti], time.Now().UnixNano())
			err = e.apiRequest(hc, http.MethodPost, base+"/api/broadcast", body)
		}
		if err != nil {
			e.sendFailed.Add(1)
			e.errs.add("publish/"+kindOf(err), err.Error())
			continue
		}
		e.sent[ti].Add(1)
	}
}

// broadcastBody appends the body of POST /api/broadcast.
func (e *engine) broadcastBody(dst []byte, topic, publisher int, seq, unixNano int64) []byte {
	dst = append(dst, `{"topic":`...)
	dst = strconv.AppendQuote(dst, e.topicNames[topic])
	dst = append(dst, `,"event":"`...)
	dst = append(dst, e.event...)
	dst = append(dst, `","payload":`...)
	dst = e.benchPayload(dst, publisher, seq, unixNano)
	return append(dst, '}')
}

// publishBody appends the body of Centrifugo's POST /api/publish, whose
// data is the same payload as a Sluice broadcast's.
func (e *engine) publishBody(dst []byte, topic, publisher int, seq, unixNano int64) []byte {
	dst = append(dst, `{"channel":`...)
	dst = strconv.AppendQuote(dst, e.topicNames[topic])
	dst = append(dst, `,"data":`...)
	dst = e.benchPayload(dst, publisher, seq, unixNano)
	return append(dst, '}')
}

// benchPayload appends the measured payload: publisher, sequence, send
// time and the padding.
func (e *engine) benchPayload(dst []byte, publisher int, seq, unixNano int64) []byte {
	dst = append(dst, `{"p":`...)
	dst = strconv.AppendInt(dst, int64(publisher), 10)
	dst = append(dst, `,"s":`...)
	dst = strconv.AppendInt(dst, seq, 10)
	dst = append(dst, `,"t":`...)
	dst = strconv.AppendInt(dst, unixNano, 10)
	if e.pad != "" {
		dst = append(dst, `,"pad":"`...)
		dst = append(dst, e.pad...)
		dst = append(dst, '"')
	}
	return append(dst, '}')
}

// apiRequest sends an authenticated API request and checks for a 2xx.
func (e *engine) apiRequest(hc *http.Client, method, u string, body []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("build %s %s: %w", method, u, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+e.cfg.APIKey)
	resp, err := hc.Do(req)
	if err != nil {
		return &kindError{kind: errorKind(err), err: fmt.Errorf("%s %s: %w", method, u, err)}
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return &kindError{kind: "http_" + strconv.Itoa(resp.StatusCode), err: fmt.Errorf("%s %s: %d %s", method, u, resp.StatusCode, bytes.TrimSpace(msg))}
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return nil
}

var cfErrorKeys = []string{"error"}

// centrifugoPublish sends one publish to Centrifugo's HTTP API, which
// answers 200 with {"error":{"code":..,"message":..}} when it refuses.
func (e *engine) centrifugoPublish(hc *http.Client, u string, body []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("build POST %s: %w", u, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", e.cfg.APIKey)
	resp, err := hc.Do(req)
	if err != nil {
		return &kindError{kind: errorKind(err), err: fmt.Errorf("POST %s: %w", u, err)}
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode/100 != 2 {
		return &kindError{kind: "http_" + strconv.Itoa(resp.StatusCode), err: fmt.Errorf("POST %s: %d %s", u, resp.StatusCode, bytes.TrimSpace(answer))}
	}
	var vals [1][]byte
	if err := objectFields(answer, cfErrorKeys, vals[:]); err != nil {
		return &kindError{kind: "bad_answer", err: fmt.Errorf("POST %s: %w: %.200s", u, err, answer)}
	}
	if vals[0] != nil {
		return &kindError{kind: "api_error", err: fmt.Errorf("POST %s: refused: %.200s", u, vals[0])}
	}
	return nil
}

// pushFunc sends one frame as a client.
type pushFunc func(ctx context.Context, body []byte) error

// runPusher is chat client c pushing nuevo_mensaje to its rooms in turn;
// k of m pushers. Its publisher id is the client's index.
func (e *engine) runPusher(ctx context.Context, c *client, push pushFunc, k, m int, start, end time.Time) {
	pc := newPacer(e.cfg.Rate/float64(m), start, end, float64(k)/float64(m))
	defer pc.stop()
	seq := make([]int64, len(c.topics))
	var body []byte
	j, n := 0, 0
	for pc.wait(ctx) && e.claim() {
		seq[j]++
		n++
		body = e.pushFrame(body[:0], c.names[j], n, c.idx, seq[j], time.Now().UnixNano())
		pctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
		err := push(pctx, body)
		cancel()
		if err != nil {
			e.sendFailed.Add(1)
			e.errs.add("push/"+kindOf(err), err.Error())
		} else {
			e.sent[c.topics[j]].Add(1)
		}
		j = (j + 1) % len(c.topics)
	}
}

// pushFrame appends a nuevo_mensaje frame whose contenido carries the
// publisher, sequence and send time. Its join_ref is null (the server
// routes it to the current join) and its ref is unique: the server drops a
// repeated ref as a retried POST.
func (e *engine) pushFrame(dst []byte, topic string, ref, publisher int, seq, unixNano int64) []byte {
	dst = append(dst, `[null,"p`...)
	dst = strconv.AppendInt(dst, int64(ref), 10)
	dst = append(dst, `",`...)
	dst = strconv.AppendQuote(dst, topic)
	dst = append(dst, `,"nuevo_mensaje",{"contenido":"bench p=`...)
	dst = strconv.AppendInt(dst, int64(publisher), 10)
	dst = append(dst, " s="...)
	dst = strconv.AppendInt(dst, seq, 10)
	dst = append(dst, " t="...)
	dst = strconv.AppendInt(dst, unixNano, 10)
	if e.pad != "" {
		dst = append(dst, ' ')
		dst = append(dst, e.pad...)
	}
	return append(dst, `"}]`...)
}

var (
	benchKeys   = []string{"p", "s", "t"}
	contentKeys = []string{"contenido"}
)

// decode reads publisher, sequence and send time from a message payload:
// {"p","s","t"} of an API broadcast, or the contenido "bench p= s= t=" of a
// chat message. ok is false for a message that is not the tool's.
func (e *engine) decode(payload []byte) (p, s, t int64, ok bool) {
	if !e.chat {
		var vals [3][]byte
		err := objectFields(payload, benchKeys, vals[:])
		p, ok1 := parseInt(vals[0])
		s, ok2 := parseInt(vals[1])
		t, ok3 := parseInt(vals[2])
		if err != nil || !ok1 || !ok2 || !ok3 || s < 1 {
			e.errs.add("bad_payload", fmt.Sprintf("%.200s", payload))
			return 0, 0, 0, false
		}
		return p, s, t, true
	}
	var vals [1][]byte
	if err := objectFields(payload, contentKeys, vals[:]); err != nil {
		e.errs.add("bad_payload", fmt.Sprintf("%.200s", payload))
		return 0, 0, 0, false
	}
	c, ok := unquote(vals[0])
	if !ok || !bytes.HasPrefix(c, []byte("bench p=")) {
		return 0, 0, 0, false // someone else's message
	}
	p, s, t, ok = parseContenido(c)
	if !ok || s < 1 {
		e.errs.add("bad_payload", fmt.Sprintf("%.200s", payload))
		return 0, 0, 0, false
	}
	return p, s, t, true
}

// parseContenido reads "bench p=<p> s=<s> t=<t>[ padding]".
func parseContenido(c []byte) (p, s, t int64, ok bool) {
	fields := [3]int64{}
	rest := c[len("bench "):]
	for k, name := range [3]string{"p=", "s=", "t="} {
		if !bytes.HasPrefix(rest, []byte(name)) {
			return 0, 0, 0, false
		}
		rest = rest[2:]
		end := bytes.IndexByte(rest, ' ')
		if end < 0 {
			end = len(rest)
		}
		v, ok := parseInt(rest[:end])
		if !ok {
			return 0, 0, 0, false
		}
		fields[k] = v
		rest = rest[end:]
		if len(rest) > 0 {
			rest = rest[1:]
		}
	}
	return fields[0], fields[1], fields[2], true
}

// createRooms creates the chat scenario's rooms, sala:<id>, with the users
// of the clients that join each as members. It creates them through every
// URL: instances sharing Redis just replace the same room, and separate
// instances (each with its own memory store) each get it.
func (e *engine) createRooms(ctx context.Context) error {
	cfg := e.cfg
	members := make([][]int64, cfg.Topics)
	for i := range cfg.Clients {
		for _, t := range cfg.topicsOf(i) {
			members[t] = append(members[t], cfg.UserBase+int64(i))
		}
	}
	type job struct {
		url  string
		body []byte
	}
	jobs := make(chan job)
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				if err := e.apiRequest(e.pool.client(w), http.MethodPut, j.url, j.body); err != nil {
					select {
					case errc <- fmt.Errorf("create chat room: %w", err):
					default:
					}
				}
			}
		}()
	}
	var err error
send:
	for t := range cfg.Topics {
		id := strings.TrimPrefix(cfg.TopicName(t), "sala:")
		if id == "lobby" {
			continue
		}
		body, merr := json.Marshal(map[string][]int64{"miembros": members[t]})
		if merr != nil {
			err = fmt.Errorf("encode room %s: %w", id, merr)
			break
		}
		for _, u := range cfg.URLs {
			select {
			case jobs <- job{u + "/api/salas/" + id, body}:
			case err = <-errc:
				break send
			case <-ctx.Done():
				err = ctx.Err()
				break send
			}
		}
	}
	close(jobs)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errc:
		default:
		}
	}
	return err
}
