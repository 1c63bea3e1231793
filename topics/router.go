// Package topics routes topic names to handlers and carries messages between
// publishers and subscribers: the Broker keeps a bounded, ordered log per topic
// so that any instance can serve any subscriber's next read, and wakes the
// readers waiting on this instance when something is published.
package topics

import "strings"

// Router maps topic names to values by pattern. A pattern is either an exact
// topic ("sala:lobby") or a prefix ending in "*" ("sala:*"), as in Phoenix's
// `channel "sala:*", SalaChannel`. Patterns are tried in the order they were
// added and the first match wins, as Phoenix does. A Router is not safe for
// concurrent modification; build it before serving.
type Router[T any] struct {
	routes []route[T]
}

type route[T any] struct {
	pattern string
	prefix  string
	exact   bool
	value   T
}

// Add registers value under pattern.
func (r *Router[T]) Add(pattern string, value T) {
	rt := route[T]{pattern: pattern, value: value}
	if p, ok := strings.CutSuffix(pattern, "*"); ok {
		rt.prefix = p
	} else {
		rt.exact = true
	}
	r.routes = append(r.routes, rt)
}

// Match returns the value of the first pattern that matches topic and the
// pattern itself.
func (r *Router[T]) Match(topic string) (value T, pattern string, ok bool) {
	for _, rt := range r.routes {
		if rt.exact && topic == rt.pattern || !rt.exact && strings.HasPrefix(topic, rt.prefix) {
			return rt.value, rt.pattern, true
		}
	}
	return value, "", false
}

// Patterns lists the registered patterns in match order.
func (r *Router[T]) Patterns() []string {
	out := make([]string, len(r.routes))
	for i, rt := range r.routes {
		out[i] = rt.pattern
	}
	return out
}
