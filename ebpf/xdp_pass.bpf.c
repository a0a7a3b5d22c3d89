// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
/*
 * An XDP program that passes every frame: for the other end of a veth pair whose end in
 * turnpike's namespace runs turnpike.bpf.c in native (driver) mode.
 *
 * A veth hands the frames an XDP program sends back with XDP_TX to its peer's receive
 * ring, but only wakes the peer to read that ring when the peer has an XDP program of its
 * own (drivers/net/veth.c, veth_xdp_flush); with none, the frames wait there until other
 * traffic wakes it, and look lost. Attaching this to the peer end fixes that:
 *
 *   ip link set dev vethXXXX xdpdrv obj xdp_pass.bpf.o sec xdp
 *
 * (README, "Kernel fast path"). Generic mode and real NICs need nothing of the kind.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
