// Package daemon is gosec's daemon life: it loads the configuration,
// creates the TUN device, sockets, routes and filters, runs the data plane,
// serves the control socket, brings conns up and down, and removes
// everything it made when it stops.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/gosec-ipsec/gosec/ike"
	"github.com/gosec-ipsec/gosec/internal/clock"
	"github.com/gosec-ipsec/gosec/internal/conf"
	"github.com/gosec-ipsec/gosec/internal/control"
	"github.com/gosec-ipsec/gosec/internal/dataplane"
	"github.com/gosec-ipsec/gosec/internal/loglevel"
	"github.com/gosec-ipsec/gosec/internal/netio"
	"github.com/gosec-ipsec/gosec/internal/savekeys"
	"github.com/gosec-ipsec/gosec/sad"
	"github.com/gosec-ipsec/gosec/spd"
)

// Version is reported by status.
const Version = "0.1.0"

// Options configure a daemon.
type Options struct {
	ConfigPath  string
	SecretsPath string
	Socket      string // control socket path (control.DefaultSocket)
	Local       string // "", "left" or "right": which side of manual conns is this host
	TUNName     string // default "gosec0"
	WireMTU     int    // MTU of the path to peers (default 1500)
	NATTPort    int    // ESP-in-UDP / IKE NAT-T port (default 4500)
	IKEPort     int    // IKE port (default 500)
	LogKeys     bool   // with key export on: log IKE keys at debug level (tests only; no flag sets it)
	Mark        uint32 // firewall mark of the daemon's sockets
	Table       int    // routing table for routes into the TUN
	FilterTable string // nftables table name
	// Debug sets the global log level to debug (gosec start --debug),
	// whatever charondebug=/plutodebug= say.
	Debug bool
	// Levels, if set, are the log levels that Log's handler applies
	// (loglevel.Handler); the daemon sets them from the configuration and
	// `gosec debug` changes them. Nil: the daemon wraps Log's handler
	// in its own (which then should accept debug records).
	Levels *loglevel.Levels
	// RawSocketsOnly sends ESP and AH through the raw IPv4 sockets (the
	// kernel's IP output path per packet) instead of AF_PACKET on the
	// outgoing Ethernet link (netio.PacketConn, the default; it falls back
	// to the raw sockets by itself when AF_PACKET cannot be opened).
	RawSocketsOnly bool
	// NoTxRing sends ESP and AH through AF_PACKET with sendmmsg only,
	// without the TX ring (netio.PacketConfig.NoTxRing).
	NoTxRing bool
	// RxRing receives ESP and AH through an AF_PACKET receive ring
	// (netio.RxRing: before netfilter INPUT and reverse-path filtering)
	// instead of the raw IPv4 sockets, falling back to them when the ring
	// cannot be opened. Off in the zero Options; `gosec start` turns it
	// on (--rxring): with its SPI filter and the bypass of the IP stack
	// it measured faster than the raw sockets (internal/netio/NOTES.md).
	RxRing bool
	// IngressBypass keeps, at tc ingress, the ESP and AH the receive
	// ring takes from the IP stack and drops those of unknown SPIs
	// (netio.IngressBypass), where TCX is available; otherwise, or when
	// false, the prerouting chain does (netio.SPIGate.BypassRing).
	IngressBypass bool
	// CryptoWorkers is the number of goroutines that seal and open in
	// parallel (dataplane.Config.Workers): 0 chooses by the machine,
	// a negative value has every reader do its own cryptography.
	CryptoWorkers int
	// TUNQueues is the number of TUN queues, each with its own reader: 0
	// chooses one per CPU up to maxTUNQueues, 1 opens a plain one-queue
	// device. Several queues need eBPF for their per-destination steering
	// (netio.TUNConfig.Queues); without it the device has one queue and
	// the daemon says why in its warnings.
	TUNQueues int
	// KeepWarm, when positive, wakes the data plane every KeepWarm while
	// packets have flowed within KeepWarmFor (0: dataplane.DefaultKeepWarmFor),
	// which cuts the latency of sparse packets
	// (dataplane.Config.KeepWarm); 0 turns it off.
	KeepWarm    time.Duration
	KeepWarmFor time.Duration
	// SaveKeysDir turns key export for Wireshark on (see internal/savekeys);
	// savekeys= in config setup does the same.
	SaveKeysDir string
	// Impair injects faults into the IKE messages the daemon sends
	// (gosec start --impair; fault-injection tests only).
	Impair []ike.Impairment
	Log    *slog.Logger
	Clock  clock.Clock
	// Ready, if set, is called once the control socket is accepting.
	Ready func()
	// Started, if set, is called with the running daemon before Ready
	// (the metrics endpoint reads Snapshot through it); an error stops
	// the daemon.
	Started func(d *Daemon) error
	// Stopping, if set, is called when the daemon begins to stop
	// (systemd's STOPPING=1).
	Stopping func()
	// Observer, if set, is told how IKE exchanges end (metrics).
	Observer ike.Observer
}

func (o *Options) defaults() {
	if o.KeepWarmFor <= 0 {
		o.KeepWarmFor = dataplane.DefaultKeepWarmFor
	}
	if o.Socket == "" {
		o.Socket = control.DefaultSocket
	}
	if o.TUNName == "" {
		o.TUNName = "gosec0"
	}
	if o.WireMTU == 0 {
		o.WireMTU = 1500
	}
	if o.NATTPort == 0 {
		o.NATTPort = 4500
	}
	if o.IKEPort == 0 {
		o.IKEPort = 500
	}
	if o.Mark == 0 {
		o.Mark = netio.DefaultMark
	}
	if o.Table == 0 {
		o.Table = netio.DefaultTable
	}
	if o.FilterTable == "" {
		o.FilterTable = netio.DefaultFilterTable
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Levels == nil {
		o.Levels = loglevel.New(slog.LevelInfo)
		o.Log = slog.New(loglevel.NewHandler(o.Log.Handler(), o.Levels))
	}
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
}

// maxOverhead is the worst case that sealing adds: outer IPv4 (20), UDP
// (8), ESP header (8), IV (16), padding (15), trailer (2), ICV (32).
const maxOverhead = 101

// maxNATTQueues bounds the NAT-T sockets (and their readers).
const maxNATTQueues = 4

// AutoProcs is the number of Go procs (GOMAXPROCS) gosec start gives the
// daemon on a machine with numCPU CPUs when neither --procs nor the
// GOMAXPROCS variable says: one on machines of up to two CPUs; 0 (leave
// Go's default, one per CPU within the cgroup's CPU limit) on larger
// ones. On our 2-core machines one proc carried 1.2-1.5x the traffic
// of two (scripts/bench-e2e.sh, bench-tunqueues.sh; README,
// Performance): below minParallelProcs each reader seals and opens
// inline anyway, and with a second proc every packet that readied a
// reader also woke an idle thread to look for work (context switches per
// packet 0.22 against 0.13), which the kernel's own share of the
// packet path then lacked. Larger machines are left as Go sets them:
// not measured here.
func AutoProcs(numCPU int) int {
	if numCPU <= 2 {
		return 1
	}
	return 0
}

// maxTUNQueues bounds the TUN queues chosen by the machine.
const maxTUNQueues = 4

// Daemon is a running gosec daemon.
type Daemon struct {
	opts    Options
	log     *slog.Logger
	started time.Time

	sad  *sad.DB
	spd  *spd.DB
	tun  *netio.TUN
	esp  espSocket
	ah   espSocket
	natt *netio.NATT
	// nattQueues are more NAT-T sockets on the same port (SO_REUSEPORT),
	// one data plane reader each; IKE and sends use natt.
	nattQueues []*netio.NATT
	router     routeTable
	// claim is the firewall table's claim, the namespace's daemon lock,
	// taken first in setup; the filter takes it over.
	claim  *netio.TableClaim
	filter cleartextFilter
	gate   spiGate // kernel drop of unknown SPIs (nil: none)
	// ringSPIs is the receive ring's SPI filter, kept by the gate (nil:
	// no ring, or the ring takes every SPI).
	ringSPIs *netio.RingSPIs
	plane    *dataplane.Plane

	// The key manager and its UDP 500 socket.
	ike     *ike.Engine
	ikeSock *net.UDPConn
	ikeStop context.CancelFunc
	ikeDone chan struct{}
	// ikeStats counts IKE exchanges and retransmissions per conn.
	ikeStats ikeStats

	mu          sync.Mutex // guards everything below
	conns       *Config
	secrets     *conf.Secrets
	active      map[string]*activeConn
	ikeChildren map[string]*installedChild
	ikeErr      map[string]string
	reqid       uint32
	reqids      map[selKey]uint32    // stable reqid of each selector pair
	reqConn     map[uint32]string    // reqid -> conn (trap triggers)
	routeRefs   map[netip.Prefix]int // conns that need each route into the TUN
	negotiating map[string]bool      // conns an on-demand negotiation runs for
	guardKept   map[string]bool      // conns down whose filter guard stays
	guardBatch  *guardBatch          // non-nil while routing many conns at once

	// updown runs leftupdown/rightupdown scripts (nil: none run).
	updown *updownRunner

	stop     context.CancelFunc
	stopOnce sync.Once
	// gone is closed once Run has removed everything it installed and
	// its data plane has ended: `gosec stop` answers only then.
	gone chan struct{}

	// keys writes SA keys for Wireshark when key export is on; warnings
	// are shown by status and statusall.
	keys     *savekeys.Writer
	warnings []string
}

func newDaemon(opts Options) *Daemon {
	return &Daemon{opts: opts, log: opts.Log, started: opts.Clock.Now(), active: map[string]*activeConn{},
		ikeChildren: map[string]*installedChild{}, ikeErr: map[string]string{}, reqids: map[selKey]uint32{},
		reqConn: map[uint32]string{}, routeRefs: map[netip.Prefix]int{}, negotiating: map[string]bool{},
		guardKept: map[string]bool{}, gone: make(chan struct{})}
}

// Run starts a daemon and blocks until it is stopped (by ctx, by the stop
// command or by a fatal data plane error). It removes everything it
// installed before it returns.
func Run(ctx context.Context, opts Options) (err error) {
	opts.defaults()
	d := newDaemon(opts)
	d.updown = newUpdownRunner(d.log)
	defer d.updown.close()
	cfg, err := d.loadConfig()
	if err != nil {
		return err
	}
	d.conns, d.secrets = cfg, cfg.Secrets
	d.ikeStats.setConns(ikeConnNames(cfg))
	d.applyLogLevels(cfg)
	if err := d.openSaveKeys(cfg); err != nil {
		return err
	}
	if d.keys != nil {
		defer d.keys.Close()
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	d.stop = cancel

	// Control socket first: a second daemon must fail before touching the
	// first one's devices, routes and filters.
	ln, err := control.Listen(opts.Socket)
	if err != nil {
		return err
	}
	defer ln.Close()

	var planeDone, srvDone chan struct{}
	defer func() {
		d.teardown()
		// The data plane's loops end when teardown closes their devices
		// and sockets; the TUN device is gone with its last descriptor.
		if planeDone != nil {
			waitAtMost(planeDone, 5*time.Second)
		}
		close(d.gone)
		// A waiting `gosec stop` gets its answer before the process exits.
		if srvDone != nil {
			waitAtMost(srvDone, 2*time.Second)
		}
	}()
	if err := d.setup(); err != nil {
		return err
	}
	if err := d.startIKE(ctx); err != nil {
		return err
	}

	planeErr := make(chan error, 1)
	planeDone = make(chan struct{})
	go func() { planeErr <- d.plane.Run(ctx); close(planeDone) }()

	d.autoStart()
	d.log.Info("gosec started", "version", Version, "socket", opts.Socket, "tun", opts.TUNName, "pid", os.Getpid())
	if opts.Started != nil {
		if err := opts.Started(d); err != nil {
			d.stopIKE()
			return err
		}
	}
	// Commands are served only now that Started (which drops privileges)
	// is done: whoever the socket answers sees the daemon as it will run.
	// Clients that connect earlier wait in the listen backlog.
	srv := &control.Server{Handler: control.HandlerFunc(d.handle), Log: d.log}
	srvErr := make(chan error, 1)
	srvDone = make(chan struct{})
	go func() { srvErr <- srv.Serve(ctx, ln); close(srvDone) }()
	if opts.Ready != nil {
		opts.Ready()
	}

	select {
	case <-ctx.Done():
	case err = <-planeErr:
		if err != nil {
			d.log.Error("data plane failed", "err", err)
		}
	case err = <-srvErr:
	}
	d.log.Info("gosec stopping")
	if opts.Stopping != nil {
		opts.Stopping()
	}
	// Delete negotiated SAs (telling peers) while the sockets still work.
	d.stopIKE()
	cancel()
	return err
}

// espSocket carries ESP or AH: a netio.PacketConn (AF_PACKET send) or a
// netio.RawConn, or either of them for sending with a receive ring
// (ringSocket).
type espSocket interface {
	Recv(ms []netio.Msg) (int, error)
	Send(ms []netio.Msg) (int, error)
	Close() error
}

// rxRingSize is the receive ring's size: 8192 frames of 2048 octets,
// about 34 ms of 1400-octet ESP at 2.4 Gbit/s. The kernel allocates it
// when the ring is set up. With 4 MB, four TCP streams through one
// tunnel on a busy 2-core gateway overflowed it by about 1 % of their
// packets (the reader off its core for a few milliseconds); with 16 MB
// not one in the same runs (internal/netio/NOTES.md).
const rxRingSize = 16 << 20

// listenRing opens the AF_PACKET receive ring for ESP and AH (one ring
// for both: see netio.RingConfig.Protos) when asked for; nil when not
// asked for or unavailable (the raw sockets receive).
func (d *Daemon) listenRing() *netio.RxRing {
	if !d.opts.RxRing {
		return nil
	}
	r, err := netio.ListenRing(netio.RingConfig{Protos: []int{50, 51}, Size: rxRingSize})
	if err != nil {
		d.log.Warn("AF_PACKET receive ring unavailable; receiving through the raw sockets", "err", err)
		return nil
	}
	return r
}

// ringFilters narrows what the receive ring and the IP stack do with ESP
// and AH, once the gate exists: the ring takes only the SPIs the gate
// admits (so forged SPIs cost the ring nothing, as they cost the raw
// sockets nothing), and the IP stack drops at prerouting the packets the
// ring took instead of processing them a second time. Either may be
// unavailable: the ring then takes every SPI (the data plane drops the
// unknown ones) or the stack processes every packet as well.
func (d *Daemon) ringFilters(gate *netio.SPIGate, ring *netio.RxRing) {
	spis, err := ring.FilterSPIs()
	if err == nil {
		if err = gate.MirrorTo(spis); err == nil {
			d.ringSPIs = spis
		} else {
			spis.Close()
		}
	}
	if err != nil {
		d.log.Warn("AF_PACKET receive ring: forged SPIs reach the data plane, which drops them", "err", err)
	}
	if err := gate.BypassRing(); err != nil {
		d.log.Warn("AF_PACKET receive ring: the IP stack keeps processing what the ring received", "err", err)
	}
	if d.ringSPIs == nil || !d.opts.IngressBypass {
		return
	}
	switch b, err := d.ringSPIs.BypassIngress(); {
	case b == nil:
		d.log.Warn("AF_PACKET receive ring: no ingress bypass; the prerouting chain drops what the ring received", "err", err)
	case err != nil:
		d.log.Warn("AF_PACKET receive ring: ingress bypass not on every interface; on the others the prerouting chain drops what the ring received", "err", err)
	}
}

// listenESP opens the socket for ESP or AH: sending through AF_PACKET with
// the raw socket for what that cannot do, unless turned off or
// unavailable. With a receive ring, the raw socket receives nothing (it
// holds the protocol, so the kernel sends no ICMP protocol-unreachable)
// and the ring is the socket's receive side (ring nil: another
// protocol's socket has it, and Recv blocks until Close).
func (d *Daemon) listenESP(cfg netio.RawConfig, withRing bool, ring *netio.RxRing) (espSocket, error) {
	cfg.NoRecv = withRing
	tx, err := d.listenSend(cfg)
	if err != nil || !withRing {
		return tx, err
	}
	return &ringSocket{ring: ring, tx: tx}, nil
}

// listenSend opens the sending side for ESP or AH: AF_PACKET with the raw
// socket as fallback, or the raw socket alone.
func (d *Daemon) listenSend(cfg netio.RawConfig) (espSocket, error) {
	if !d.opts.RawSocketsOnly {
		c, err := netio.ListenPacket(netio.PacketConfig{RawConfig: cfg, Clock: d.opts.Clock, Log: d.log, NoTxRing: d.opts.NoTxRing})
		if err == nil {
			return c, nil
		}
		d.log.Warn("AF_PACKET send path unavailable; sending through the raw socket", "proto", cfg.Proto, "err", err)
	}
	c, err := netio.ListenRaw(cfg)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// ringSocket receives through an AF_PACKET ring and sends through tx
// (whose raw socket receives nothing). The ring carries ESP and AH and
// belongs to the ESP socket; the AH socket's ring is nil.
type ringSocket struct {
	ring *netio.RxRing
	tx   espSocket
}

func (s *ringSocket) Recv(ms []netio.Msg) (int, error) {
	if s.ring == nil {
		return s.tx.Recv(ms) // nothing arrives: blocks until Close
	}
	return s.ring.Recv(ms)
}

func (s *ringSocket) Send(ms []netio.Msg) (int, error) { return s.tx.Send(ms) }

func (s *ringSocket) Close() error {
	var err error
	if s.ring != nil {
		err = s.ring.Close()
	}
	if e := s.tx.Close(); err == nil {
		err = e
	}
	return err
}

// notOwnedWarning is what the log and the status say while the daemon
// does not own its table.
func notOwnedWarning(table string) string {
	return fmt.Sprintf("nftables table inet %s is not owned by the daemon (the kernel lacks NFT_TABLE_F_PERSIST, Linux 6.9, or an older gosec left the table): "+
		"a firewall reload that flushes the ruleset deletes the cleartext drops and guards, which the daemon then restores; "+
		"on a kernel that has the flag, gosec owns the table from its first start after a clean stop (which deletes the table)", table)
}

// tableGoneWarning is what the log and the status say when another
// process deleted the daemon's (unowned) table while it ran and it could
// not be restored.
func tableGoneWarning(table string) string {
	return fmt.Sprintf("nftables table inet %s was deleted by another process (a firewall reload that flushes the ruleset?) and could not be restored: "+
		"the cleartext drops, the guards and the kernel SPI filter are gone, and conns cannot come up; "+
		"restart gosec (gosec stop, gosec start) to install it again", table)
}

// setup creates the devices, sockets, routes and filters.
func (d *Daemon) setup() error {
	o := d.opts
	// Claim the firewall table before anything else: the claim holds the
	// namespace's daemon lock (netio.TableClaim). A second daemon in
	// this namespace with another control socket would otherwise take the
	// first one's routes and rules below for a crashed predecessor's and
	// remove them, and attach queues to its TUN.
	claim, err := netio.ClaimTable(o.FilterTable)
	if err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	d.claim = claim
	// Remove what a crashed predecessor may have left.
	// The filter table is not removed here: its guard must hold until
	// NewFilter replaces it in one transaction (a crashed predecessor's
	// guard is what keeps protected traffic from leaving meanwhile).
	_ = netio.CleanupRoutes(netio.RouteConfig{Table: o.Table, Mark: o.Mark})

	d.sad = sad.New(o.Clock, d.onSAEvent)
	d.spd = spd.New()

	tunQueues := o.TUNQueues
	if tunQueues <= 0 {
		tunQueues = min(runtime.NumCPU(), maxTUNQueues)
	}
	d.tun, err = netio.OpenTUN(netio.TUNConfig{Name: o.TUNName, MTU: o.WireMTU - maxOverhead, Queues: tunQueues})
	if err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	if err := d.tun.SteerErr(); err != nil {
		w := fmt.Sprintf("TUN %s has 1 queue, not %d: its per-destination steering could not be loaded (%v)", d.tun.Name(), tunQueues, err)
		d.warnings = append(d.warnings, w)
		d.log.Warn(w)
	}
	var tunQueueDevs []dataplane.TUNDevice
	var steer func([]netip.Prefix) error // nothing to steer with one queue
	for i := 1; i < d.tun.Queues(); i++ {
		tunQueueDevs = append(tunQueueDevs, d.tun.Queue(i))
		steer = d.tun.Steer
	}
	ring := d.listenRing()
	d.esp, err = d.listenESP(netio.RawConfig{Proto: 50, Mark: o.Mark, Buffer: 4 << 20}, ring != nil, ring)
	if err != nil {
		if ring != nil {
			ring.Close()
		}
		return fmt.Errorf("daemon: raw ESP socket: %w", err)
	}
	d.ah, err = d.listenESP(netio.RawConfig{Proto: 51, Mark: o.Mark, Buffer: 1 << 20}, ring != nil, nil)
	if err != nil {
		return fmt.Errorf("daemon: raw AH socket: %w", err)
	}
	// One NAT-T socket per core (up to maxNATTQueues), bound to the same
	// port with SO_REUSEPORT: the kernel hashes each peer's flow to one of
	// them, so several peers' ESP-in-UDP is received on several cores.
	// Queues follow the cores, not GOMAXPROCS: with fewer Go procs than
	// cores (AutoProcs) the readers still overlap in the kernel, each on
	// its own thread while in a system call.
	queues := min(runtime.NumCPU(), maxNATTQueues)
	nattCfg := netio.UDPConfig{Addr: netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(o.NATTPort)), Mark: o.Mark, GRO: true, Buffer: 4 << 20, ReusePort: queues > 1, RecvDst: true}
	udp, err := netio.ListenUDP(nattCfg)
	if err != nil {
		return fmt.Errorf("daemon: NAT-T socket: %w", err)
	}
	d.natt = &netio.NATT{Conn: udp}
	nattCfg.Addr = udp.LocalAddr() // the port the kernel chose for 0
	var extra []dataplane.UDPConn
	for i := 1; i < queues; i++ {
		q, err := netio.ListenUDP(nattCfg)
		if err != nil {
			return fmt.Errorf("daemon: NAT-T socket %d: %w", i+1, err)
		}
		d.nattQueues = append(d.nattQueues, &netio.NATT{Conn: q})
		extra = append(extra, d.nattQueues[i-1])
	}
	router, err := netio.NewRouter(netio.RouteConfig{Table: o.Table, Mark: o.Mark, TUNIndex: d.tun.Index()})
	if err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	d.router = router
	// The guard of every conn routed at start is in the very transaction
	// that replaces a crashed predecessor's table, and the guards that
	// table held for conns still configured stay until those conns are up
	// again or taken down: protected traffic never leaves in the clear
	// across a crash and restart.
	guards := map[string][]netip.Prefix{}
	for _, name := range d.conns.Order {
		if c := d.conns.Conns[name]; routedAtStart(c) || (c.Manual != nil && (c.Auto == "start" || c.Auto == "route")) {
			guards[name] = d.protected(c)
		}
	}
	filter, err := netio.NewFilter(netio.FilterConfig{Table: o.FilterTable, TUN: d.tun.Name(), IKEPorts: []uint16{500, uint16(o.NATTPort)},
		Mark: o.Mark, Guards: guards, Claim: d.claim, OnGone: func(restoreErr error) {
			if restoreErr != nil {
				d.log.Error(tableGoneWarning(o.FilterTable), "restore_err", restoreErr)
				return
			}
			d.log.Warn(fmt.Sprintf("nftables table inet %s was deleted by another process (a firewall reload that flushes the ruleset?) and restored: "+
				"its cleartext drops and guards were missing for a moment", o.FilterTable))
		}, KeepStale: func(conn string) bool {
			c, ok := d.conns.Conns[conn]
			return ok && c.Type != "passthrough" && c.Type != "drop"
		}})
	if err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	d.filter = filter
	if !filter.Owned() {
		// The status says it while it lasts (a restored table may be
		// owned).
		d.log.Warn(notOwnedWarning(o.FilterTable))
	}
	// The kernel drops ESP, AH and ESP-in-UDP of SPIs no inbound SA holds
	// (the set starts empty, as the SAD does).
	gate, err := netio.NewSPIGate(netio.SPIGateConfig{Filter: filter, NATTPort: udp.LocalAddr().Port()})
	if err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	d.gate = gate
	if rs, ok := d.esp.(*ringSocket); ok {
		d.ringFilters(gate, rs.ring)
	}
	for name, ps := range filter.Kept() {
		d.guardKept[name] = true
		d.log.Warn("keeping the cleartext guard a previous gosec left for this conn: its traffic is dropped until it is up or taken down",
			"conn", name, "prefixes", fmt.Sprint(ps))
	}
	d.plane, err = dataplane.New(dataplane.Config{
		TUN: d.tun, TUNQueues: tunQueueDevs, Steer: steer,
		ESP: d.esp, AH: d.ah, NATT: d.natt, NATTQueues: extra,
		SAD: d.sad, SPD: d.spd, WireMTU: o.WireMTU, Workers: o.CryptoWorkers,
		Log: d.log, DebugDrops: d.debugDrops, OnTrap: d.onTrap,
		KeepWarm: o.KeepWarm, KeepWarmFor: o.KeepWarmFor, Clock: o.Clock,
	})
	return err
}

// teardown removes everything the daemon made, in reverse order.
func (d *Daemon) teardown() {
	d.stopIKE()
	d.mu.Lock()
	for name := range d.active {
		d.downLocked(name)
	}
	d.mu.Unlock()
	var errs []error
	if d.gate != nil {
		errs = append(errs, d.gate.Close())
	}
	if d.ringSPIs != nil {
		errs = append(errs, d.ringSPIs.Close())
	}
	if d.filter != nil {
		errs = append(errs, d.filter.Close())
	}
	if d.claim != nil {
		// A start-up that failed before its filter took the claim.
		errs = append(errs, d.claim.Close())
	}
	if d.router != nil {
		errs = append(errs, d.router.Close())
	}
	if d.natt != nil {
		errs = append(errs, d.natt.Conn.Close())
	}
	for _, q := range d.nattQueues {
		errs = append(errs, q.Conn.Close())
	}
	if d.ah != nil {
		errs = append(errs, d.ah.Close())
	}
	if d.esp != nil {
		errs = append(errs, d.esp.Close())
	}
	if d.tun != nil {
		errs = append(errs, d.tun.Close())
	}
	if d.sad != nil {
		d.sad.Close() // wipes every SA's suites
	}
	d.wipeManualKeys()
	if err := errors.Join(errs...); err != nil {
		d.log.Warn("teardown", "err", err)
	}
}

// stopWait bounds how long the stop command waits for the daemon to
// remove its state (telling peers, deleting SAs, routes and filters).
const stopWait = 20 * time.Second

// waitAtMost waits for ch to be closed, or d to pass; it reports whether
// ch was closed. The bounds it serves are shutdown safety nets, not
// protocol timers, so they run on the real clock, not opts.Clock.
func waitAtMost(ch <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
		return false
	}
}

// handle serves one control request.
func (d *Daemon) handle(ctx context.Context, req control.Request, progress func(string)) (any, error) {
	arg := func() (string, error) {
		if len(req.Args) != 1 || req.Args[0] == "" {
			return "", fmt.Errorf("%s needs exactly one connection name", req.Cmd)
		}
		return req.Args[0], nil
	}
	switch req.Cmd {
	case "ping":
		return "pong", nil
	case "up":
		name, err := arg()
		if err != nil {
			return nil, err
		}
		return nil, d.up(ctx, name, progress)
	case "down":
		name, err := arg()
		if err != nil {
			return nil, err
		}
		return nil, d.down(name, progress)
	case "unroute":
		name, err := arg()
		if err != nil {
			return nil, err
		}
		return nil, d.unroute(name, progress)
	case "status", "statusall":
		return d.status(req.Cmd == "statusall"), nil
	case "reload":
		return nil, d.reload(progress)
	case "debug":
		return d.setDebug(req.Args)
	case "stop":
		progress("stopping gosec")
		d.stopOnce.Do(func() { go d.stop() })
		// Answer once the SAs are deleted and the TUN device, routes and
		// filters are gone, so that whoever runs `gosec stop` (an
		// administrator, a script, systemd's ExecStop) finds them gone.
		if !waitAtMost(d.gone, stopWait) {
			return nil, fmt.Errorf("gosec is still removing its state after %v", stopWait)
		}
		progress("gosec stopped")
		return nil, nil
	}
	return nil, fmt.Errorf("unknown command %q", req.Cmd)
}
