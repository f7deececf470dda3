package netio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/google/nftables"
	mdnetlink "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Owning the daemon's table.
//
// An administrator's firewall reload commonly starts with `flush ruleset`
// (Debian's /etc/nftables.conf does, and `systemctl reload nftables` runs
// it), which deletes every table, gosec's with it: the inbound cleartext
// drops, the outbound guard and the SPI gate would be gone without the
// daemon knowing, and a forged cleartext packet claiming a protected
// source would be forwarded into the protected network. So the daemon
// creates its table with NFT_TABLE_F_OWNER and NFT_TABLE_F_PERSIST
// (Linux 6.9), as firewalld does with NftablesTableOwner:
//
//   - owner: only the netlink socket that created (or adopted) the table
//     may change or delete it; other processes get EPERM, and `flush
//     ruleset` leaves it alone;
//   - persist: when that socket closes (the daemon exits or is killed) the
//     table stays, unowned, so a crashed daemon's guards keep protected
//     traffic from leaving in the clear; the next daemon adopts it by
//     setting the owner flag again, and replaces its contents.
//
// google/nftables (v0.3.0) always sends a table's flags as 0, and the
// kernel refuses to change NFT_TABLE_F_PERSIST on an existing table
// (EOPNOTSUPP), so every message that names the table itself goes out
// here, on the raw socket under the library's connection, and the library
// only ever touches the table's chains, sets and rules.
//
// A kernel without NFT_TABLE_F_PERSIST refuses the flags (EOPNOTSUPP), and
// so does the kernel for a stale table an older gosec created without
// them: the table is then created as before, unowned (Filter.Owned
// reports it; ownership without persistence would lose the guards on a
// crash, so the daemon never asks for the owner flag alone).

// Table flags (include/uapi/linux/netfilter/nf_tables.h).
const (
	nftTableOwner   = 0x2 // NFT_TABLE_F_OWNER
	nftTablePersist = 0x4 // NFT_TABLE_F_PERSIST
)

// nftSession is the netlink socket through which every change to the
// daemon's table goes: the socket that owns the table. The Filter opens
// it; the SPIGate shares it. mu serializes its use: the library queues
// messages on the connection until Flush, and a lasting socket's replies
// would mix if two callers used it at once.
type nftSession struct {
	mu  sync.Mutex
	c   *nftables.Conn
	raw *mdnetlink.Conn // the socket under c (for the table's own messages)
}

// newNFTSession opens a session in the calling thread's namespace.
func newNFTSession() (*nftSession, error) {
	c, raw, err := nftablesHere()
	if err != nil {
		return nil, err
	}
	return &nftSession{c: c, raw: raw}, nil
}

// close closes the socket; an owned, persistent table stays.
func (s *nftSession) close() {
	s.c.CloseLasting()
}

// ownTable creates table inet name owned by this socket and persistent,
// or adopts an existing one left unowned by a socket that closed. It fails
// with EPERM when another live socket owns it (another daemon), with
// EOPNOTSUPP when the kernel cannot keep an owned table after its owner
// (before Linux 6.9) or the table exists without NFT_TABLE_F_PERSIST.
// s.mu held (or s not yet shared).
func (s *nftSession) ownTable(name string) error {
	if noPersistForTests {
		return unix.EOPNOTSUPP
	}
	return s.newTable(name, nftTableOwner|nftTablePersist)
}

// noPersistForTests makes ownTable answer as a kernel before Linux 6.9
// does (tests only).
var noPersistForTests bool

// newTable creates table inet name with flags on this socket, or sets
// them on an existing table (see ownTable for the errors).
func (s *nftSession) newTable(name string, flags uint32) error {
	ae := mdnetlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.String(unix.NFTA_TABLE_NAME, name)
	ae.Uint32(unix.NFTA_TABLE_FLAGS, flags)
	attrs, err := ae.Encode()
	if err != nil {
		return err
	}
	batchHdr := []byte{unix.NFPROTO_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES}
	msgs := []mdnetlink.Message{
		{Header: mdnetlink.Header{Type: mdnetlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN), Flags: mdnetlink.Request}, Data: batchHdr},
		{
			Header: mdnetlink.Header{
				Type:  mdnetlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWTABLE),
				Flags: mdnetlink.Request | mdnetlink.Acknowledge | mdnetlink.Create,
			},
			Data: append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
		},
		{Header: mdnetlink.Header{Type: mdnetlink.HeaderType(unix.NFNL_MSG_BATCH_END), Flags: mdnetlink.Request}, Data: batchHdr},
	}
	if _, err := s.raw.SendMessages(msgs); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	// One acknowledgement: the table's (the batch markers ask for none).
	if _, err := s.raw.Receive(); err != nil {
		return err
	}
	return nil
}

// clearTable queues the deletion of every chain and set table t holds
// (a crashed daemon's, adopted): deleting the table instead would take
// its ownership with it. Chains go first: their rules hold the sets.
// s.mu held.
func (s *nftSession) clearTable(t *nftables.Table) error {
	chains, sets, err := s.tableObjects(t)
	if err != nil {
		return err
	}
	for _, name := range chains {
		s.c.DelChain(&nftables.Chain{Table: t, Name: name})
	}
	for _, name := range sets {
		s.c.DelSet(&nftables.Set{Table: t, Name: name})
	}
	return nil
}

// tableObjects lists the names of the chains and sets table t holds.
// s.mu held.
func (s *nftSession) tableObjects(t *nftables.Table) (chains, sets []string, err error) {
	all, err := s.c.ListChainsOfTableFamily(t.Family)
	if err != nil {
		return nil, nil, fmt.Errorf("list chains: %w", err)
	}
	for _, ch := range all {
		if ch.Table.Name == t.Name {
			chains = append(chains, ch.Name)
		}
	}
	ss, err := s.c.GetSets(t)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return nil, nil, fmt.Errorf("list sets: %w", err)
	}
	for _, set := range ss {
		sets = append(sets, set.Name)
	}
	return chains, sets, nil
}

// TableClaim is a daemon's hold on its table, taken before the daemon
// touches anything else in the namespace. It is also the namespace's
// daemon lock: an empty table "<name>-lock" owned by the daemon's socket
// without NFT_TABLE_F_PERSIST (Linux 5.12), which one live socket only can
// own, which nobody without CAP_NET_ADMIN in the namespace can take, and
// which the kernel deletes with the socket, when the daemon stops or
// dies. A second gosec started in the same namespace (with another control
// socket, so that the socket's own check does not stop it) fails here,
// before it removes the first one's routes and rules as a crashed
// predecessor's or attaches queues to its TUN. The lock is a table of its
// own, not the daemon's table, because that table cannot always be owned:
// before Linux 6.9 (no NFT_TABLE_F_PERSIST), or when a stale table of an
// older gosec has no flags, it is created unowned (Owned reports it), and
// a ruleset flush can delete it while its daemon runs. Only a kernel
// without NFT_TABLE_F_OWNER leaves the namespace unlocked (Locked).
//
// Claiming adopts a crashed daemon's table without changing what is in
// it: its guards hold until NewFilter replaces its contents in one
// transaction.
type TableClaim struct {
	name   string
	sess   *nftSession
	owned  bool
	locked bool // the lock table is held
	taken  bool // handed to a Filter, which closes it
}

// LockTableSuffix names a claim's lock table: table inet <name>-lock.
const LockTableSuffix = "-lock"

// ErrAnotherDaemon is returned (wrapped) by ClaimTable when another live
// process owns the table.
var ErrAnotherDaemon = errors.New("another process owns the table: is another gosec running in this namespace?")

// ClaimTable claims table inet name in the calling thread's network
// namespace (DefaultFilterTable if name is empty).
func ClaimTable(name string) (*TableClaim, error) {
	if name == "" {
		name = DefaultFilterTable
	}
	sess, err := newNFTSession()
	if err != nil {
		return nil, fmt.Errorf("netio: nftables: %w", err)
	}
	c := &TableClaim{name: name, sess: sess}
	fail := func(table string, err error) (*TableClaim, error) {
		sess.close() // the lock table goes with the socket
		if errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("netio: table inet %s: %w (%w)", table, ErrAnotherDaemon, err)
		}
		return nil, fmt.Errorf("netio: own table inet %s: %w", table, err)
	}
	lock := name + LockTableSuffix
	switch err := sess.newTable(lock, nftTableOwner); {
	case err == nil:
		c.locked = true
	case errors.Is(err, unix.EOPNOTSUPP):
		// Before Linux 5.12: no lock.
	default:
		return fail(lock, err)
	}
	switch err := sess.ownTable(name); {
	case err == nil:
		c.owned = true
	case errors.Is(err, unix.EOPNOTSUPP):
		// Unowned, as before NFT_TABLE_F_PERSIST.
	default:
		// EPERM: a live daemon owns it (one that took no lock table).
		return fail(name, err)
	}
	return c, nil
}

// Owned reports whether the claim owns the table, persistent: a ruleset
// flush leaves it, and it outlives the daemon.
func (c *TableClaim) Owned() bool { return c.owned }

// Locked reports whether the claim holds the lock table, which locks the
// namespace against a second daemon.
func (c *TableClaim) Locked() bool { return c.locked }

// Table is the claimed table's name.
func (c *TableClaim) Table() string { return c.name }

// Close gives up a claim that no Filter took (a start-up that failed
// before its filter): an owned table that holds nothing (one this claim
// created) is deleted, one that holds something (a crashed daemon's,
// adopted) stays, unowned, with its guards. Close after a Filter took the
// claim does nothing: the Filter's Close ends it.
func (c *TableClaim) Close() error {
	if c.taken || c.sess == nil {
		return nil
	}
	s := c.sess
	c.sess = nil
	defer s.close()
	if !c.owned {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: c.name}
	chains, sets, err := s.tableObjects(t)
	if err != nil {
		return fmt.Errorf("netio: table inet %s: %w", c.name, err)
	}
	if len(chains) > 0 || len(sets) > 0 {
		return nil
	}
	s.c.DelTable(t)
	if err := s.c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("netio: delete empty table inet %s: %w", c.name, err)
	}
	return nil
}
