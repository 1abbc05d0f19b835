// Package nfacct creates and reads the kernel's extended accounting objects (nfacct),
// which iptables rules count packets into with "-m nfacct --nfacct-name NAME". Upstream
// kube-proxy counts dropped INVALID packets and accepted localhost node-port packets this
// way and exports them as metrics; kproxy writes the same rules and metrics, so the rules
// of a node do not change when it swaps one proxy for the other.
//
// It speaks nfnetlink (subsystem NFNL_SUBSYS_ACCT) through vishvananda/netlink's nl
// package in the calling thread's network namespace; it runs no binary.
package nfacct

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// The counters upstream kube-proxy creates.
const (
	// InvalidDropped counts packets KUBE-FORWARD drops as conntrack INVALID.
	InvalidDropped = "ct_state_invalid_dropped_pkts"
	// LocalhostNodePortsAccepted counts packets accepted for node ports on 127.0.0.0/8.
	LocalhostNodePortsAccepted = "localhost_nps_accepted_pkts"
)

// Interface creates and reads counters; the real one is New, tests use a fake.
type Interface interface {
	// Ensure creates the counter unless it exists.
	Ensure(name string) error
	// Packets returns the counter's packet count.
	Packets(name string) (uint64, error)
}

// From include/uapi/linux/netfilter/nfnetlink.h and nfnetlink_acct.h.
const (
	subsysAcct  = 7 // NFNL_SUBSYS_ACCT
	msgAcctNew  = 0 // NFNL_MSG_ACCT_NEW
	msgAcctGet  = 1 // NFNL_MSG_ACCT_GET
	attrName    = 1 // NFACCT_NAME
	attrPackets = 2 // NFACCT_PKTS
	// maxNameLen is NFACCT_NAME_MAX, terminating NUL included.
	maxNameLen = 32
)

type netlinkRunner struct{}

// New returns the netlink implementation.
func New() Interface { return netlinkRunner{} }

func request(msg, flags int, name string) (*nl.NetlinkRequest, error) {
	if len(name) == 0 || len(name) >= maxNameLen {
		return nil, fmt.Errorf("nfacct name %q: must be 1 to %d bytes", name, maxNameLen-1)
	}
	req := nl.NewNetlinkRequest(subsysAcct<<8|msg, flags)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: unix.AF_UNSPEC, Version: nl.NFNETLINK_V0})
	req.AddData(nl.NewRtAttr(attrName, nl.ZeroTerminated(name)))
	return req, nil
}

// Ensure implements Interface. NLM_F_EXCL makes an existing counter an EEXIST error,
// which is success here; without it the kernel would reset nothing either, but the
// answer would not tell the two apart.
func (netlinkRunner) Ensure(name string) error {
	req, err := request(msgAcctNew, unix.NLM_F_REQUEST|unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK, name)
	if err != nil {
		return err
	}
	if _, err := req.Execute(unix.NETLINK_NETFILTER, 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("creating nfacct counter %s: %w", name, err)
	}
	return nil
}

// Packets implements Interface.
func (netlinkRunner) Packets(name string) (uint64, error) {
	req, err := request(msgAcctGet, unix.NLM_F_REQUEST|unix.NLM_F_ACK, name)
	if err != nil {
		return 0, err
	}
	msgs, err := req.Execute(unix.NETLINK_NETFILTER, 0)
	if err != nil {
		return 0, fmt.Errorf("reading nfacct counter %s: %w", name, err)
	}
	for _, m := range msgs {
		if len(m) < nl.SizeofNfgenmsg {
			continue
		}
		attrs, err := nl.ParseRouteAttr(m[nl.SizeofNfgenmsg:])
		if err != nil {
			return 0, fmt.Errorf("reading nfacct counter %s: %w", name, err)
		}
		for _, a := range attrs {
			// NLA_F_NESTED/NET_BYTEORDER flags may be set in the type.
			if a.Attr.Type&nl.NLA_TYPE_MASK == attrPackets && len(a.Value) == 8 {
				return binary.BigEndian.Uint64(a.Value), nil
			}
		}
	}
	return 0, fmt.Errorf("reading nfacct counter %s: no packet count in the answer", name)
}
