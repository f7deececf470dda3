package ike

import (
	"fmt"
	"strings"
	"time"
)

// Impairment changes one message the engine sends, for fault-injection
// tests against real peers (as Libreswan's impair= options): the first
// time the engine sends Message (MM1..MM6, QM1..QM3) of Conn (any conn
// when empty), it drops it (the peer or our retransmission recovers),
// duplicates it, delays it by Delay, or sends it and replays a copy
// after Delay (after the exchange completed, typically). Later sends of
// the same message (retransmissions) go unchanged.
type Impairment struct {
	Action  string // drop, duplicate, delay, replay
	Message string // MM1 .. MM6, QM1 .. QM3
	Delay   time.Duration
	Conn    string
}

// ParseImpairments parses a comma-separated list of
// ACTION:MESSAGE[:DELAY][@CONN], e.g. "drop:MM3@home,replay:QM1:3s".
func ParseImpairments(s string) ([]Impairment, error) {
	var out []Impairment
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		var im Impairment
		if at := strings.LastIndex(item, "@"); at >= 0 {
			item, im.Conn = item[:at], item[at+1:]
		}
		parts := strings.Split(item, ":")
		if len(parts) < 2 || len(parts) > 3 {
			return nil, fmt.Errorf("impairment %q: want ACTION:MESSAGE[:DELAY][@CONN]", item)
		}
		im.Action, im.Message = parts[0], strings.ToUpper(parts[1])
		switch im.Action {
		case "drop", "duplicate", "delay", "replay":
		default:
			return nil, fmt.Errorf("impairment %q: action must be drop, duplicate, delay or replay", item)
		}
		switch im.Message {
		case "MM1", "MM2", "MM3", "MM4", "MM5", "MM6", "QM1", "QM2", "QM3":
		default:
			return nil, fmt.Errorf("impairment %q: message must be MM1..MM6 or QM1..QM3", item)
		}
		if len(parts) == 3 {
			d, err := time.ParseDuration(parts[2])
			if err != nil || d <= 0 {
				return nil, fmt.Errorf("impairment %q: bad delay %q", item, parts[2])
			}
			im.Delay = d
		}
		if (im.Action == "delay" || im.Action == "replay") && im.Delay == 0 {
			return nil, fmt.Errorf("impairment %q: %s needs a delay (ACTION:MESSAGE:DELAY)", item, im.Action)
		}
		out = append(out, im)
	}
	return out, nil
}

// impairmentState counts what each impairment has done.
type impairmentState struct {
	Impairment
	used bool
}

// impairedSend sends msg (the first send of message name of t's conn)
// through the configured impairments; send transmits it once.
func (e *Engine) impairedSend(t task, name string, send func()) {
	conn := ""
	if c := t.sa().conn; c != nil {
		conn = c.Name
	}
	for _, im := range e.impair {
		if im.used || im.Message != name || (im.Conn != "" && im.Conn != conn) {
			continue
		}
		im.used = true
		e.log.Warn("IMPAIR: "+im.Action+" "+name, "conn", conn, "delay", im.Delay)
		switch im.Action {
		case "drop":
		case "duplicate":
			send()
			send()
		case "delay":
			e.cfg.Clock.AfterFunc(im.Delay, func() { e.post(send) })
		case "replay":
			send()
			e.cfg.Clock.AfterFunc(im.Delay, func() { e.post(send) })
		}
		return
	}
	send()
}
