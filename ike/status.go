package ike

import (
	"context"
	"encoding/hex"
	"fmt"
	"sort"
	"time"
)

// ISAKMPStatus describes one phase-1 SA for `gosec status`.
type ISAKMPStatus struct {
	Conn      string `json:"conn"`
	State     string `json:"state"` // Pluto's state names: MAIN_I1..MAIN_I4, MAIN_R1..MAIN_R3
	Initiator bool   `json:"initiator"`
	ICookie   string `json:"icookie"`
	RCookie   string `json:"rcookie"`
	Local     string `json:"local"`
	Remote    string `json:"remote"`
	PeerID    string `json:"peer_id,omitempty"`
	Suite     string `json:"suite,omitempty"`
	NATT      bool   `json:"natt"`
	NAT       string `json:"nat,omitempty"` // "local", "remote", "both" behind NAT
	// AgeSeconds since the negotiation started; LifeLeftSeconds until
	// the phase-1 lifetime ends (established SAs only).
	AgeSeconds      int64 `json:"age_seconds"`
	LifeLeftSeconds int64 `json:"life_left_seconds,omitempty"`
	QuickModes      int   `json:"quick_modes_pending"`
}

// ChildStatus describes one negotiated IPsec SA pair.
type ChildStatus struct {
	Conn            string `json:"conn"`
	InSPI           string `json:"in_spi"`
	OutSPI          string `json:"out_spi"`
	Suite           string `json:"suite"`
	PFS             string `json:"pfs"`
	Mode            string `json:"mode"`
	LocalTS         string `json:"local_ts"`
	RemoteTS        string `json:"remote_ts"`
	Encap           bool   `json:"udp_encap"`
	Initiator       bool   `json:"initiator"`
	AgeSeconds      int64  `json:"age_seconds"`
	LifeLeftSeconds int64  `json:"life_left_seconds"`
	ISAKMP          string `json:"isakmp,omitempty"` // cookies of the phase-1 SA that made it
}

// maxListedHalfOpen bounds the half-open responder SAs Status lists.
const maxListedHalfOpen = 16

// Status returns the phase-1 SAs and the IPsec SA pairs, ordered by conn.
func (e *Engine) Status(ctx context.Context) ([]ISAKMPStatus, []ChildStatus, error) {
	var p1s []ISAKMPStatus
	var cs []ChildStatus
	err := e.call(ctx, func() {
		now := e.cfg.Clock.Now()
		halfOpen := 0
		for _, p := range e.sortedSAs() {
			// A flood leaves thousands of half-open responder SAs: list
			// the first maxListedHalfOpen; the half-open counter has them all.
			if !p.initiator && !p.established() {
				if halfOpen++; halfOpen > maxListedHalfOpen {
					continue
				}
			}
			st := ISAKMPStatus{State: p.phase1.String(), Initiator: p.initiator, ICookie: hex.EncodeToString(p.icky[:]),
				RCookie: hex.EncodeToString(p.rcky[:]), Local: p.local.String(), Remote: p.peer.String(), PeerID: p.peerID,
				NATT: p.natt, AgeSeconds: int64(now.Sub(p.created) / time.Second)}
			if p.conn != nil {
				st.Conn = p.conn.Name
			}
			if p.suite.Hash != 0 {
				st.Suite = p.suite.String()
			}
			switch {
			case p.weBehindNAT && p.peerBehindNAT:
				st.NAT = "both"
			case p.weBehindNAT:
				st.NAT = "local"
			case p.peerBehindNAT:
				st.NAT = "remote"
			}
			if p.established() && p.suite.Life > 0 {
				st.LifeLeftSeconds = int64((p.suite.Life - now.Sub(p.estTime)) / time.Second)
			}
			for _, q := range p.qms {
				if q.state == quickI1 || q.state == quickR1 || q.outPending() {
					st.QuickModes++
				}
			}
			p1s = append(p1s, st)
		}
		for _, ch := range e.allChildren() {
			c := ch.sa
			st := ChildStatus{Conn: c.Conn, InSPI: fmt.Sprintf("%08x", c.InSPI), OutSPI: fmt.Sprintf("%08x", c.OutSPI),
				Suite: c.Suite, PFS: ch.group, Mode: c.Mode.String(), LocalTS: c.LocalTS.String(), RemoteTS: c.RemoteTS.String(),
				Encap: c.Encap != nil, Initiator: ch.initiator, AgeSeconds: int64(now.Sub(ch.established) / time.Second)}
			if c.Lifetime > 0 {
				st.LifeLeftSeconds = int64((c.Lifetime - now.Sub(ch.established)) / time.Second)
			}
			if p := e.p1ForChild(ch); p != nil {
				st.ISAKMP = p.cookieString() // after a reauthentication, the ISAKMP SA that now speaks for it
			}
			cs = append(cs, st)
		}
		sort.SliceStable(cs, func(i, j int) bool { return cs[i].Conn < cs[j].Conn })
	})
	return p1s, cs, err
}
