package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"time"

	"github.com/gosec-ipsec/gosec/ike"
)

// An updown event: the script of the conn's local end (leftupdown or
// rightupdown) runs with the environment that strongSwan's and Libreswan's
// _updown scripts read, the way Pluto runs it.
type updownEvent struct {
	script string
	env    []string
	verb   string
	conn   string
}

// updownTimeout bounds one script run; it never blocks the tunnel.
const updownTimeout = 30 * time.Second

// updownQueue bounds the events waiting for the runner.
const updownQueue = 256

// updownRunner runs updown scripts one after the other (so that a conn's
// down never overtakes its up), on a goroutine of its own.
type updownRunner struct {
	ch   chan updownEvent
	done chan struct{}
	log  *slog.Logger
}

func newUpdownRunner(log *slog.Logger) *updownRunner {
	r := &updownRunner{ch: make(chan updownEvent, updownQueue), done: make(chan struct{}), log: log}
	go r.run()
	return r
}

func (r *updownRunner) run() {
	defer close(r.done)
	for ev := range r.ch {
		ctx, cancel := context.WithTimeout(context.Background(), updownTimeout)
		cmd := exec.CommandContext(ctx, "/bin/sh", "-c", ev.script)
		cmd.Env = append(os.Environ(), ev.env...)
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			r.log.Warn("updown script failed", "conn", ev.conn, "verb", ev.verb, "err", err, "output", tailString(string(out), 512))
		} else {
			r.log.Info("updown script ran", "conn", ev.conn, "verb", ev.verb)
		}
	}
}

// post queues an event without blocking; a full queue is logged.
func (r *updownRunner) post(ev updownEvent) {
	select {
	case r.ch <- ev:
	default:
		r.log.Warn("updown queue full: script not run", "conn", ev.conn, "verb", ev.verb)
	}
}

// close runs what is queued (the down events of a stopping daemon) and
// waits for it, at most updownTimeout.
func (r *updownRunner) close() {
	close(r.ch)
	select {
	case <-r.done:
	case <-time.After(updownTimeout):
		r.log.Warn("updown scripts still running at exit")
	}
}

func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// updownEnv is the PLUTO_* environment for child ch of conn spec (as
// Libreswan's and strongSwan's _updown scripts read it).
func updownEnv(verb string, spec *ConnSpec, ch *ike.ChildSA, reqid uint32, iface string) []string {
	proto := "esp"
	if ch.Proto == ike.ProtoAH {
		proto = "ah"
	}
	env := []string{
		"PLUTO_VERSION=1.1",
		"PLUTO_VERB=" + verb,
		"PLUTO_CONNECTION=" + ch.Conn,
		"PLUTO_INTERFACE=" + iface,
		"PLUTO_REQID=" + strconv.FormatUint(uint64(reqid), 10),
		"PLUTO_PROTO=" + proto,
		"PLUTO_UNIQUEID=" + strconv.FormatUint(uint64(ch.InSPI), 10),
		fmt.Sprintf("PLUTO_SPI_IN=%08x", ch.InSPI),
		fmt.Sprintf("PLUTO_SPI_OUT=%08x", ch.OutSPI),
		"PLUTO_ME=" + ch.Local.String(),
		"PLUTO_PEER=" + ch.Remote.String(),
		"PLUTO_MY_CLIENT=" + ch.LocalTS.String(),
		"PLUTO_MY_CLIENT_NET=" + ch.LocalTS.Masked().Addr().String(),
		"PLUTO_MY_CLIENT_MASK=" + netmask(ch.LocalTS),
		"PLUTO_MY_PORT=" + strconv.Itoa(int(ch.LocalPort)),
		"PLUTO_MY_PROTOCOL=" + strconv.Itoa(int(ch.Proto8)),
		"PLUTO_PEER_CLIENT=" + ch.RemoteTS.String(),
		"PLUTO_PEER_CLIENT_NET=" + ch.RemoteTS.Masked().Addr().String(),
		"PLUTO_PEER_CLIENT_MASK=" + netmask(ch.RemoteTS),
		"PLUTO_PEER_PORT=" + strconv.Itoa(int(ch.RemotePort)),
		"PLUTO_PEER_PROTOCOL=" + strconv.Itoa(int(ch.Proto8)),
	}
	if spec != nil && spec.IKE != nil {
		myID, peerID := spec.IKE.LocalID, spec.IKE.RemoteID
		if myID == "" {
			myID = ch.Local.String()
		}
		if peerID == "" || peerID == "%any" {
			peerID = ch.Remote.String()
		}
		env = append(env, "PLUTO_MY_ID="+myID, "PLUTO_PEER_ID="+peerID)
	}
	if ch.Encap != nil {
		env = append(env, "PLUTO_UDP_ENC="+strconv.Itoa(int(ch.Encap.DstPort)))
	}
	return env
}

// netmask is p's mask in dotted form, as PLUTO_*_CLIENT_MASK has it.
func netmask(p netip.Prefix) string {
	return net.IP(net.CIDRMask(p.Bits(), p.Addr().BitLen())).String()
}

// updownVerb is Pluto's verb for an SA pair of ch going up or down:
// -host when the SAs protect the hosts themselves (transport mode, or
// tunnel mode between the two gateways' addresses), -client otherwise.
func updownVerb(up bool, ch *ike.ChildSA) string {
	v := "down"
	if up {
		v = "up"
	}
	if ch.Mode == ike.ModeTransport || (ch.LocalTS.Bits() == 32 && ch.LocalTS.Addr() == ch.Local &&
		ch.RemoteTS.Bits() == 32 && ch.RemoteTS.Addr() == ch.Remote) {
		return v + "-host"
	}
	return v + "-client"
}

// updownLocked queues the updown script of ic's conn, if it has one.
func (d *Daemon) updownLocked(up bool, ic *installedChild) {
	ch := ic.ch
	spec := d.conns.Conns[ch.Conn]
	if spec == nil || spec.UpDown == "" || d.updown == nil {
		return
	}
	verb := updownVerb(up, ch)
	d.updown.post(updownEvent{script: spec.UpDown, verb: verb, conn: ch.Conn,
		env: updownEnv(verb, spec, ch, ic.reqid, d.opts.TUNName)})
}
