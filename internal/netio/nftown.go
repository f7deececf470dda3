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
	ae := mdnetlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.String(unix.NFTA_TABLE_NAME, name)
	ae.Uint32(unix.NFTA_TABLE_FLAGS, nftTableOwner|nftTablePersist)
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
	chains, err := s.c.ListChainsOfTableFamily(t.Family)
	if err != nil {
		return fmt.Errorf("list chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table.Name == t.Name {
			s.c.DelChain(&nftables.Chain{Table: t, Name: ch.Name})
		}
	}
	sets, err := s.c.GetSets(t)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("list sets: %w", err)
	}
	for _, set := range sets {
		s.c.DelSet(&nftables.Set{Table: t, Name: set.Name})
	}
	return nil
}
