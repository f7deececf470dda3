package ike

import (
	"fmt"
	"iter"
	"strings"
)

// Proposal selection, one helper for both phases: Main Mode's responder
// (selectP1Raw) and initiator (acceptP1Reply), Quick Mode's responder
// (selectP2) and initiator (acceptP2Reply). A phase says only how one of
// the peer's transforms (O) compares with one of our suites (S), in a
// rule; matching counts differences in place and formats nothing, and a
// refusal is put in words only when it is about to be logged or shown
// (errNoProposal.Error).

// rule is how one phase compares a peer's transform with one of our
// suites.
type rule[O, S any] struct {
	// mismatches counts how o differs from s, without formatting
	// anything: the matching loop runs it for every pair.
	mismatches func(o O, s S) int
	// diff words the differences, offerName and ourName name each side
	// (explanations only).
	diff      func(o O, s S) []string
	offerName func(o O) string
	ourName   func(s S) string
}

// chooser finds the first of ours, in our order of preference, that one
// of the peer's offers matches, and the first offer that matches it,
// seeing the offers one at a time in the peer's order (so that phase 1
// can read them in place, allocating nothing per transform).
type chooser[O, S any] struct {
	r     rule[O, S]
	ours  []S
	best  int // index in ours of the match so far; len(ours): none
	offer O
}

func (r rule[O, S]) chooser(ours []S) chooser[O, S] {
	return chooser[O, S]{r: r, ours: ours, best: len(ours)}
}

// see takes the next offer; true once nothing better can come (our
// first choice matched).
func (c *chooser[O, S]) see(o O) bool {
	for i := range c.ours[:c.best] {
		if c.r.mismatches(o, c.ours[i]) == 0 {
			c.best, c.offer = i, o
			break
		}
	}
	return c.best == 0
}

// result is the chosen suite and offer; false if none matched.
func (c *chooser[O, S]) result() (S, O, bool) {
	if c.best == len(c.ours) {
		var s S
		var o O
		return s, o, false
	}
	return c.ours[c.best], c.offer, true
}

// choose runs a chooser over offers.
func (r rule[O, S]) choose(ours []S, offers ...O) (S, O, bool) {
	c := r.chooser(ours)
	for _, o := range offers {
		if c.see(o) {
			break
		}
	}
	return c.result()
}

// maxExplained bounds how many offered transforms a refusal names; the
// rest are counted ("and 2540 more"), so that an explanation stays under
// about 1 KB whatever the peer sent.
const maxExplained = 8

// explain words a refusal of phase's offers: what the peer offered and
// what we accept (at most maxExplained of each, the rest counted), and
// the nearest pair with how it differs.
func (r rule[O, S]) explain(phase int, ours []S, offers iter.Seq[O]) string {
	var offered, accept []string
	best, bestDiff, bestN := "", []string(nil), -1
	nOffered := 0
	for o := range offers {
		if nOffered++; nOffered <= maxExplained {
			offered = append(offered, r.offerName(o))
		}
		for _, s := range ours {
			if n := r.mismatches(o, s); bestN < 0 || n < bestN {
				bestN, best, bestDiff = n, fmt.Sprintf("%s vs our %s", r.offerName(o), r.ourName(s)), r.diff(o, s)
			}
		}
	}
	for i, s := range ours {
		if i < maxExplained {
			accept = append(accept, r.ourName(s))
		}
	}
	more := func(list []string, total int) string {
		s := strings.Join(list, ", ")
		if total > len(list) {
			s += fmt.Sprintf(", and %d more", total-len(list))
		}
		return s
	}
	msg := fmt.Sprintf("no acceptable phase-%d proposal: peer offered [%s], this conn accepts [%s]",
		phase, more(offered, nOffered), more(accept, len(ours)))
	if bestDiff != nil {
		msg += fmt.Sprintf("; nearest (%s) differs in %s", best, strings.Join(bestDiff, ", "))
	}
	return msg
}

// errNoProposal explains a failed selection; it becomes the log line and
// what `gosec up` prints. Its text is built only when asked for (a
// refusal that the rate limiter does not log costs no formatting).
type errNoProposal struct {
	// whole: the SA payload is unacceptable as a whole (malformed, not
	// the IPsec DOI), whatever the conn; msg says why. Otherwise
	// explain words the refusal, once.
	whole   bool
	msg     string
	explain func() string
}

func (e *errNoProposal) Error() string {
	if e.msg == "" && e.explain != nil {
		e.msg, e.explain = e.explain(), nil
	}
	return e.msg
}

// refusal is the error for offers that matched none of ours.
func (r rule[O, S]) refusal(phase int, ours []S, offers iter.Seq[O]) *errNoProposal {
	return &errNoProposal{explain: func() string { return r.explain(phase, ours, offers) }}
}
