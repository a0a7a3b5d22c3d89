// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
/*
 * turnpike's kernel fast path: relays the ChannelData of established TURN channels in XDP.
 *
 *   client --ChannelData--> server listen ip:port   becomes  relay ip:port --UDP--> peer
 *   peer   --UDP----------> relay ip:port           becomes  listen ip:port --ChannelData--> client
 *   client --ChannelData--> (peer = another relay of this server, with a channel back)
 *                                                   becomes  listen ip:port --ChannelData--> its client
 *
 * Each side may be IPv4 or IPv6 independently (a dual allocation, RFC 8656 §7.2, relays to
 * peers of both families whatever the client's): a frame changing family gets a new IP
 * header (tos <-> traffic class, TTL <-> hop limit, DF set towards IPv4) and its UDP
 * checksum moved to the new pseudo-header. The third line is the hairpin: when both
 * WebRTC peers relay through this server, one's relay is the other's peer, and the frame
 * goes from client to client without the kernel's UDP stack in between.
 *
 * Userspace is authoritative: the daemon (src/net/xdp.rs) installs an entry when the core
 * binds a channel and removes it when the channel or its permission expires or the allocation
 * ends, so this program holds no TURN state of its own and never creates map entries. Ports
 * and addresses come only from those entries: there is no compiled-in port. A hairpin needs
 * both allocations' entries (the channel one way and the channel back), so it forwards only
 * what userspace would.
 *
 * Anything unusual is XDP_PASSed untouched to the kernel stack and so to userspace, which
 * applies every rule: a frame for another MAC address, not IPv4/IPv6 over Ethernet, IP
 * options or IPv6 extension headers,
 * fragments, lengths that do not add up (bytes after the IP datagram beyond Ethernet's
 * padding included), STUN, unknown channels or peers, TTL about to run
 * out, no route or no neighbour entry yet, a packet that would need fragmenting, an IPv4
 * datagram without a UDP checksum that would become IPv6 (which requires one).
 *
 * The next hop comes from bpf_fib_lookup (never by swapping the sender's MAC addresses); the
 * frame leaves with XDP_TX when it goes back out of the interface it came in on, with
 * bpf_redirect otherwise. TTL / hop limit is decremented. The IPv4 header checksum is
 * recomputed (20 bytes, no options); the UDP checksum is updated incrementally (RFC 1624
 * eqn. 3), so a datagram that arrived corrupt still fails its checksum at the receiver.
 *
 * Map layouts are fixed byte structs; src/net/xdp.rs encodes and decodes them byte by byte
 * and its tests pin the sizes below. Addresses and ports are in network byte order, the
 * counter key in host order. Kept in sync by hand: change both or neither.
 *
 * Licence: the program calls GPL-only helpers (bpf_fib_lookup), so the kernel requires a
 * GPL-compatible licence string; this file alone is dual MIT / GPL-2.0.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
/* Entries per map; Firezone's relay uses the same. Userspace keeps the ChannelData of any
 * channel beyond this on its own path. */
#define MAX_ENTRIES 65536
#define CHANNEL_HEADER 4
/* Padding is read at most this far into the UDP payload. */
#define MAX_PAYLOAD_OFFSET 0x3fff
#define V4_HEADER ((int)sizeof(struct iphdr))
#define V6_HEADER ((int)sizeof(struct ipv6hdr))

/* ---- map layouts (see src/net/xdp.rs: ChannelEntry / the size tests) ---- */

/* Keys are in the family of the frame they match; values say the family of what they
 * point to (`family`: 4 or 6), an IPv4 address in the first 4 bytes of its 16. */

/* client -> peer, an IPv4 client: 16 bytes */
struct c2p_v4_key {
	__be32 client_ip;
	__be32 server_ip;
	__be16 client_port;
	__be16 server_port;
	__be16 channel;
	__u16 pad;
};

/* client -> peer, an IPv6 client: 40 bytes */
struct c2p_v6_key {
	__u8 client_ip[16];
	__u8 server_ip[16];
	__be16 client_port;
	__be16 server_port;
	__be16 channel;
	__u16 pad;
};

/* 48 bytes */
struct c2p_value {
	__u64 counter; /* key into alloc_counters */
	__u8 relay_ip[16];
	__u8 peer_ip[16];
	__be16 relay_port;
	__be16 peer_port;
	__u8 family;
	__u8 pad[3];
};

/* peer -> client, an IPv4 peer: 12 bytes */
struct p2c_v4_key {
	__be32 peer_ip;
	__be32 relay_ip;
	__be16 peer_port;
	__be16 relay_port;
};

/* peer -> client, an IPv6 peer: 36 bytes */
struct p2c_v6_key {
	__u8 peer_ip[16];
	__u8 relay_ip[16];
	__be16 peer_port;
	__be16 relay_port;
};

/* 48 bytes */
struct p2c_value {
	__u64 counter;
	__u8 client_ip[16];
	__u8 server_ip[16];
	__be16 client_port;
	__be16 server_port;
	__be16 channel;
	__u8 family;
	__u8 pad;
};

/* Per allocation, per CPU: what the kernel relayed. Bytes are application data (ChannelData
 * payload), as userspace counts them. 32 bytes. */
struct alloc_counters {
	__u64 to_peer_packets;
	__u64 to_peer_bytes;
	__u64 from_peer_packets;
	__u64 from_peer_bytes;
};

_Static_assert(sizeof(struct c2p_v4_key) == 16, "c2p_v4_key");
_Static_assert(sizeof(struct c2p_v6_key) == 40, "c2p_v6_key");
_Static_assert(sizeof(struct c2p_value) == 48, "c2p_value");
_Static_assert(sizeof(struct p2c_v4_key) == 12, "p2c_v4_key");
_Static_assert(sizeof(struct p2c_v6_key) == 36, "p2c_v6_key");
_Static_assert(sizeof(struct p2c_value) == 48, "p2c_value");
_Static_assert(sizeof(struct alloc_counters) == 32, "alloc_counters");

/* Why a frame was passed, or how it left: the index into `datapath_stats`. Keep in the
 * order of `REASONS` in src/net/xdp.rs. */
enum reason {
	PASS_NOT_IP = 0,     /* not IPv4/IPv6 directly over Ethernet (VLAN, ARP, ...) */
	PASS_NOT_UDP,        /* another transport, or IPv6 extension headers */
	PASS_IP_OPTIONS,     /* IPv4 IHL != 5 */
	PASS_FRAGMENT,       /* an IPv4 fragment */
	PASS_MALFORMED,      /* truncated, IP and UDP lengths disagree, or bytes follow */
	PASS_STUN,           /* first two bits 00: a STUN message for userspace */
	PASS_NO_ENTRY,       /* no channel or peer entry for these addresses */
	PASS_LENGTH,         /* ChannelData length field and UDP length disagree */
	PASS_TTL,            /* TTL / hop limit would reach zero */
	PASS_NO_ROUTE,       /* bpf_fib_lookup: no route, forwarding disabled, ... */
	PASS_NO_NEIGH,       /* bpf_fib_lookup: next hop's MAC not yet resolved */
	PASS_FRAG_NEEDED,    /* the result would exceed the egress MTU */
	PASS_NO_CHECKSUM,    /* UDP without a checksum, from IPv6 (invalid) or to IPv6 */
	PASS_ERROR,          /* a helper failed (adjust_head/tail) */
	TX_TO_PEER,          /* ChannelData relayed as UDP to the peer */
	TX_TO_CLIENT,        /* UDP relayed as ChannelData to the client */
	BYTES_TO_PEER,       /* not a reason: application bytes of TX_TO_PEER */
	BYTES_TO_CLIENT,     /* not a reason: application bytes of TX_TO_CLIENT */
	TX_HAIRPIN,          /* ChannelData relayed as ChannelData to another client */
	BYTES_HAIRPIN,       /* not a reason: application bytes of TX_HAIRPIN */
	PASS_OTHER_HOST,     /* unicast to another MAC (promiscuous mode, a flooding bridge) */
	REASONS,
};

/* The attached interface's MAC, set by the loader (src/net/xdp.rs) before the program
 * loads. */
const volatile __u8 own_mac[ETH_ALEN] = {};

static __always_inline int is_own_mac(const __u8 *mac)
{
	__u8 diff = 0;
#pragma unroll
	for (int i = 0; i < ETH_ALEN; i++)
		diff |= mac[i] ^ own_mac[i];
	return diff == 0;
}

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct c2p_v4_key);
	__type(value, struct c2p_value);
} c2p_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct p2c_v4_key);
	__type(value, struct p2c_value);
} p2c_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct c2p_v6_key);
	__type(value, struct c2p_value);
} c2p_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct p2c_v6_key);
	__type(value, struct p2c_value);
} p2c_v6 SEC(".maps");

/* Keyed by the `counter` of the entries above; userspace creates the entry (zeroed) before
 * the first channel entry that names it and deletes it after reading it at the end. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, __u64);
	__type(value, struct alloc_counters);
} alloc_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, REASONS);
	__type(key, __u32);
	__type(value, __u64);
} datapath_stats SEC(".maps");

static __always_inline int count(__u32 reason, int action)
{
	__u64 *n = bpf_map_lookup_elem(&datapath_stats, &reason);
	if (n)
		*n += 1;
	return action;
}

#define PASS(reason) count((reason), XDP_PASS)

static __always_inline void add_bytes(__u32 index, __u64 bytes)
{
	__u64 *n = bpf_map_lookup_elem(&datapath_stats, &index);
	if (n)
		*n += bytes;
}

/* ---- checksums ---- */

/* Ones'-complement sum, in the byte order of memory (the sum commutes with byte swapping,
 * so no conversion is needed as long as every term is taken the same way). */
static __always_inline __u32 add16(__u32 sum, __u16 word)
{
	return sum + word;
}

static __always_inline __u32 sub16(__u32 sum, __u16 word)
{
	return sum + (__u16)~word;
}

static __always_inline __u32 add32(__u32 sum, __u32 word)
{
	return sum + (word & 0xffff) + (word >> 16);
}

static __always_inline __u32 sub32(__u32 sum, __u32 word)
{
	return sub16(sub16(sum, word & 0xffff), word >> 16);
}

/* An address of the pseudo-header, added or taken away: 4 bytes or 16. Pseudo-headers of
 * both families carry the protocol (17) and the UDP length as the same 16-bit words, so
 * only the addresses differ between them. */
static __always_inline __u32 add_ip(__u32 sum, const __u8 *ip, int v6)
{
	__u32 w[4];
	__builtin_memcpy(w, ip, 16);
	sum = add32(sum, w[0]);
	if (v6)
		for (int i = 1; i < 4; i++)
			sum = add32(sum, w[i]);
	return sum;
}

static __always_inline __u32 sub_ip(__u32 sum, const __u8 *ip, int v6)
{
	__u32 w[4];
	__builtin_memcpy(w, ip, 16);
	sum = sub32(sum, w[0]);
	if (v6)
		for (int i = 1; i < 4; i++)
			sum = sub32(sum, w[i]);
	return sum;
}

static __always_inline __u16 fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* The stored UDP checksum from a sum over the checksummed words (0 is sent as 0xffff,
 * RFC 768: 0 means "no checksum"). */
static __always_inline __u16 udp_check(__u32 sum)
{
	__u16 check = ~fold(sum);
	return check ? check : 0xffff;
}

/* One trailing byte of the UDP payload at `offset`, as the checksum saw it: the first byte
 * of a 16-bit word, or the second (an odd-length payload is padded with a zero byte). */
static __always_inline __u16 byte_word(__u8 byte, __u32 offset)
{
	/* As stored: bytes (byte, 0) or (0, byte). */
	return (offset & 1) ? bpf_htons(byte) : bpf_htons((__u16)byte << 8);
}

static __always_inline __u16 ipv4_check(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u32 sum = 0;
	for (int i = 0; i < 10; i++)
		sum = add16(sum, w[i]);
	return ~fold(sum);
}

/* ---- one frame ---- */

/* What arrived, as parsed by handle_v4/handle_v6 (all pointers into the frame). */
struct frame {
	void *l3;
	struct udphdr *udp;
	__u8 *payload;
	__u32 payload_len;
	__u8 src[16]; /* IPv4: the first 4 bytes */
	__u8 dst[16];
	__u8 ttl;     /* or hop limit */
	__u8 tclass;  /* tos or traffic class */
};

/* Where it goes. */
struct target {
	__u8 src[16];
	__u8 dst[16];
	__be16 sport;
	__be16 dport;
	__be16 channel; /* when the new frame is ChannelData */
	__u8 v6;
	struct alloc_counters *to_peer;   /* counted as sent to a peer, if set */
	struct alloc_counters *from_peer; /* counted as received from a peer, if set */
	/* Filled in by route(). */
	__u8 smac[ETH_ALEN];
	__u8 dmac[ETH_ALEN];
	__u32 ifindex;
};

/* Resolves the next hop of a packet of `tot_len` bytes for `t`: 0, or the BPF_FIB_LKUP_RET_
 * code. */
static __always_inline long route(struct xdp_md *ctx, struct target *t, __u8 tos,
				  __u32 tot_len)
{
	struct bpf_fib_lookup fib = {};
	fib.ifindex = ctx->ingress_ifindex;
	fib.l4_protocol = IPPROTO_UDP;
	fib.sport = t->sport;
	fib.dport = t->dport;
	fib.tot_len = tot_len;
	if (t->v6) {
		fib.family = AF_INET6;
		__builtin_memcpy(fib.ipv6_src, t->src, 16);
		__builtin_memcpy(fib.ipv6_dst, t->dst, 16);
	} else {
		fib.family = AF_INET;
		fib.tos = tos;
		__builtin_memcpy(&fib.ipv4_src, t->src, 4);
		__builtin_memcpy(&fib.ipv4_dst, t->dst, 4);
	}
	long rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		__builtin_memcpy(t->smac, fib.smac, ETH_ALEN);
		__builtin_memcpy(t->dmac, fib.dmac, ETH_ALEN);
		t->ifindex = fib.ifindex;
	}
	return rc;
}

static __always_inline int route_failed(long rc)
{
	switch (rc) {
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		return PASS(PASS_NO_NEIGH);
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		return PASS(PASS_FRAG_NEEDED);
	default:
		return PASS(PASS_NO_ROUTE);
	}
}

/* The size of the new packet (IP header onwards) carrying `data_len` bytes. */
static __always_inline __u32 packet_len(int out_v6, int out_cd, __u32 data_len)
{
	return (out_v6 ? V6_HEADER : V4_HEADER) + sizeof(struct udphdr) +
	       (out_cd ? CHANNEL_HEADER : 0) + data_len;
}

/*
 * Rewrites the frame `f` (IPv6 if in_v6; ChannelData with `pad` bytes of padding if in_cd)
 * into a packet to `t` (IPv6 if out_v6; ChannelData if out_cd) carrying the same `data_len`
 * bytes of application data, and sends it. `t` is already routed. The constant flags make
 * each call site a separate, branch-free copy.
 */
static __always_inline int emit(struct xdp_md *ctx, const struct frame *f, struct target *t,
				int in_v6, int out_v6, int in_cd, int out_cd, __u32 data_len,
				__u32 pad, __u32 reason, __u32 bytes_index)
{
	void *end = (void *)(long)ctx->data_end;
	struct udphdr *udp = f->udp;
	__u16 old_check = udp->check;
	__u16 new_udp_len = sizeof(struct udphdr) + (out_cd ? CHANNEL_HEADER : 0) + data_len;
	__u16 len_raw = bpf_htons(data_len);
	__u16 new_check = 0;

	if (!old_check && (in_v6 || out_v6))
		return PASS(PASS_NO_CHECKSUM);
	if (old_check) {
		__u32 sum = (__u16)~old_check;
		sum = sub_ip(sum, f->src, in_v6);
		sum = sub_ip(sum, f->dst, in_v6);
		sum = sub16(sum, udp->source);
		sum = sub16(sum, udp->dest);
		sum = sub16(sum, udp->len); /* the pseudo-header's copy */
		sum = sub16(sum, udp->len);
		if (in_cd) {
			__u16 chan_raw, old_len_raw;
			__builtin_memcpy(&chan_raw, f->payload, 2);
			__builtin_memcpy(&old_len_raw, f->payload + 2, 2);
			sum = sub16(sum, chan_raw);
			sum = sub16(sum, old_len_raw);
			/* Padding bytes leave with the header. */
			for (__u32 i = 0; i < 3; i++) {
				if (i >= pad)
					break;
				__u32 off = CHANNEL_HEADER + data_len + i;
				/* A bound the verifier can see (a linear XDP buffer is a page). */
				if (off > MAX_PAYLOAD_OFFSET)
					return PASS(PASS_LENGTH);
				/* Hide the value so clang keeps the mask the verifier reads the
				 * bound from. */
				asm volatile("" : "+r"(off));
				__u8 *b = f->payload + (off & MAX_PAYLOAD_OFFSET);
				if ((void *)(b + 1) > end)
					return PASS(PASS_MALFORMED);
				sum = sub16(sum, byte_word(*b, off));
			}
		}
		sum = add_ip(sum, t->src, out_v6);
		sum = add_ip(sum, t->dst, out_v6);
		sum = add16(sum, t->sport);
		sum = add16(sum, t->dport);
		sum = add16(sum, bpf_htons(new_udp_len));
		sum = add16(sum, bpf_htons(new_udp_len));
		if (out_cd) {
			sum = add16(sum, t->channel);
			sum = add16(sum, len_raw);
		}
		new_check = udp_check(sum);
	}

	/* The new IP header, built before the frame moves. Within a family the old one is
	 * kept (IPv4 id and DF, IPv6 flow label); across, it is made from tos / TTL. */
	struct iphdr ip4 = {};
	struct ipv6hdr ip6 = {};
	if (out_v6) {
		if (in_v6) {
			ip6 = *(struct ipv6hdr *)f->l3;
		} else {
			ip6.version = 6;
			ip6.priority = f->tclass >> 4;
			ip6.flow_lbl[0] = (f->tclass & 0xf) << 4;
			ip6.nexthdr = IPPROTO_UDP;
		}
		ip6.payload_len = bpf_htons(new_udp_len);
		ip6.hop_limit = f->ttl - 1;
		__builtin_memcpy(&ip6.saddr, t->src, 16);
		__builtin_memcpy(&ip6.daddr, t->dst, 16);
	} else {
		if (!in_v6) {
			ip4 = *(struct iphdr *)f->l3;
		} else {
			ip4.version = 4;
			ip4.ihl = 5;
			ip4.tos = f->tclass;
			/* IPv6 is never fragmented on the way: neither is what it becomes. */
			ip4.frag_off = bpf_htons(0x4000);
			ip4.protocol = IPPROTO_UDP;
		}
		ip4.tot_len = bpf_htons(V4_HEADER + new_udp_len);
		ip4.ttl = f->ttl - 1;
		__builtin_memcpy(&ip4.saddr, t->src, 4);
		__builtin_memcpy(&ip4.daddr, t->dst, 4);
		ip4.check = 0;
		ip4.check = ipv4_check(&ip4);
	}

	if (in_cd && pad && bpf_xdp_adjust_tail(ctx, -(int)pad))
		return PASS(PASS_ERROR);
	/* Old headers (IP + ChannelData) out, new ones in: the Ethernet header moves by the
	 * difference, the data stays where it is. */
	int delta = (in_v6 ? V6_HEADER : V4_HEADER) + (in_cd ? CHANNEL_HEADER : 0) -
		    (out_v6 ? V6_HEADER : V4_HEADER) - (out_cd ? CHANNEL_HEADER : 0);
	if (delta && bpf_xdp_adjust_head(ctx, delta))
		return PASS(PASS_ERROR);

	void *data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	void *l3 = eth + 1;
	struct udphdr *oudp = l3 + (out_v6 ? V6_HEADER : V4_HEADER);
	__u8 *cd = (__u8 *)(oudp + 1);
	if ((void *)(cd + (out_cd ? CHANNEL_HEADER : 0)) > end)
		return count(PASS_ERROR, XDP_DROP); /* cannot happen: the frame only moved */
	__builtin_memcpy(eth->h_dest, t->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, t->smac, ETH_ALEN);
	if (out_v6) {
		eth->h_proto = bpf_htons(ETH_P_IPV6);
		*(struct ipv6hdr *)l3 = ip6;
	} else {
		eth->h_proto = bpf_htons(ETH_P_IP);
		*(struct iphdr *)l3 = ip4;
	}
	oudp->source = t->sport;
	oudp->dest = t->dport;
	oudp->len = bpf_htons(new_udp_len);
	oudp->check = new_check;
	if (out_cd) {
		__builtin_memcpy(cd, &t->channel, 2);
		__builtin_memcpy(cd + 2, &len_raw, 2);
	}

	if (t->to_peer) {
		t->to_peer->to_peer_packets += 1;
		t->to_peer->to_peer_bytes += data_len;
	}
	if (t->from_peer) {
		t->from_peer->from_peer_packets += 1;
		t->from_peer->from_peer_bytes += data_len;
	}
	add_bytes(bytes_index, data_len);
	if (t->ifindex == ctx->ingress_ifindex)
		return count(reason, XDP_TX);
	return count(reason, bpf_redirect(t->ifindex, 0));
}

/* The client of the allocation `relay` belongs to, if it has a channel to `peer`: the
 * second half of a hairpin. */
static __always_inline struct p2c_value *channel_back(const struct c2p_value *to)
{
	if (to->family == 6) {
		struct p2c_v6_key key = {
			.peer_port = to->relay_port,
			.relay_port = to->peer_port,
		};
		__builtin_memcpy(key.peer_ip, to->relay_ip, 16);
		__builtin_memcpy(key.relay_ip, to->peer_ip, 16);
		return bpf_map_lookup_elem(&p2c_v6, &key);
	}
	struct p2c_v4_key key = {
		.peer_port = to->relay_port,
		.relay_port = to->peer_port,
	};
	__builtin_memcpy(&key.peer_ip, to->relay_ip, 4);
	__builtin_memcpy(&key.relay_ip, to->peer_ip, 4);
	return bpf_map_lookup_elem(&p2c_v4, &key);
}

static __always_inline void to_client(struct target *t, const struct p2c_value *to)
{
	__builtin_memcpy(t->src, to->server_ip, 16);
	__builtin_memcpy(t->dst, to->client_ip, 16);
	t->sport = to->server_port;
	t->dport = to->client_port;
	t->channel = to->channel;
	t->v6 = to->family == 6;
}

/* ChannelData from a client with an entry: to its peer, or (hairpin) to the client whose
 * relay that peer is. */
static __always_inline int client_to_peer(struct xdp_md *ctx, struct frame *f, int in_v6,
					  const struct c2p_value *to)
{
	void *end = (void *)(long)ctx->data_end;
	if ((void *)(f->payload + CHANNEL_HEADER) > end)
		return PASS(PASS_MALFORMED);
	__u16 len_raw;
	__builtin_memcpy(&len_raw, f->payload + 2, 2);
	__u32 data_len = bpf_ntohs(len_raw);
	/* Over UDP the padding is optional (RFC 8656 §12.5): take up to 3 trailing bytes and
	 * send exactly `data_len`; anything else is for userspace to judge. */
	if (f->payload_len < CHANNEL_HEADER + data_len ||
	    f->payload_len > CHANNEL_HEADER + data_len + 3)
		return PASS(PASS_LENGTH);
	__u32 pad = f->payload_len - CHANNEL_HEADER - data_len;
	if (f->ttl <= 1)
		return PASS(PASS_TTL);
	struct alloc_counters *counters = bpf_map_lookup_elem(&alloc_counters, &to->counter);
	if (!counters)
		return PASS(PASS_NO_ENTRY);

	struct target t = {};
	__builtin_memcpy(t.src, to->relay_ip, 16);
	__builtin_memcpy(t.dst, to->peer_ip, 16);
	t.sport = to->relay_port;
	t.dport = to->peer_port;
	t.v6 = to->family == 6;
	t.to_peer = counters;
	long rc = route(ctx, &t, f->tclass, packet_len(t.v6, 0, data_len));
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		if (t.v6)
			return emit(ctx, f, &t, in_v6, 1, 1, 0, data_len, pad, TX_TO_PEER,
				    BYTES_TO_PEER);
		return emit(ctx, f, &t, in_v6, 0, 1, 0, data_len, pad, TX_TO_PEER,
			    BYTES_TO_PEER);
	}
	/* A local destination: the peer may be another relay of this server. */
	if (rc != BPF_FIB_LKUP_RET_NOT_FWDED)
		return route_failed(rc);
	struct p2c_value *back = channel_back(to);
	if (!back)
		return route_failed(rc);
	struct alloc_counters *theirs = bpf_map_lookup_elem(&alloc_counters, &back->counter);
	if (!theirs)
		return PASS(PASS_NO_ENTRY);
	to_client(&t, back);
	t.from_peer = theirs;
	rc = route(ctx, &t, f->tclass, packet_len(t.v6, 1, data_len));
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return route_failed(rc);
	if (t.v6)
		return emit(ctx, f, &t, in_v6, 1, 1, 1, data_len, pad, TX_HAIRPIN, BYTES_HAIRPIN);
	return emit(ctx, f, &t, in_v6, 0, 1, 1, data_len, pad, TX_HAIRPIN, BYTES_HAIRPIN);
}

/* A datagram from a permitted peer with a channel: ChannelData to the client. */
static __always_inline int peer_to_client(struct xdp_md *ctx, struct frame *f, int in_v6,
					  const struct p2c_value *to)
{
	if (f->ttl <= 1)
		return PASS(PASS_TTL);
	struct alloc_counters *counters = bpf_map_lookup_elem(&alloc_counters, &to->counter);
	if (!counters)
		return PASS(PASS_NO_ENTRY);
	struct target t = {};
	to_client(&t, to);
	t.from_peer = counters;
	long rc = route(ctx, &t, f->tclass, packet_len(t.v6, 1, f->payload_len));
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return route_failed(rc);
	if (t.v6)
		return emit(ctx, f, &t, in_v6, 1, 0, 1, f->payload_len, 0, TX_TO_CLIENT,
			    BYTES_TO_CLIENT);
	return emit(ctx, f, &t, in_v6, 0, 0, 1, f->payload_len, 0, TX_TO_CLIENT,
		    BYTES_TO_CLIENT);
}

/* ---- parsing ---- */

/* Whether the IP datagram ending at `datagram_end` is the whole frame. Ethernet pads a
 * frame to its minimum size, so a short one may end later; anything else after the
 * datagram would be relayed with it, uncounted, where the kernel stack trims it. */
static __always_inline int datagram_fills_frame(struct xdp_md *ctx, void *datagram_end)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (datagram_end > end)
		return 0;
	return datagram_end == end || end <= data + ETH_ZLEN;
}

static __always_inline int handle_v4(struct xdp_md *ctx, void *l3)
{
	void *end = (void *)(long)ctx->data_end;
	struct iphdr *ip = l3;
	if ((void *)(ip + 1) > end)
		return PASS(PASS_MALFORMED);
	if (ip->version != 4 || ip->ihl != 5)
		return PASS(PASS_IP_OPTIONS);
	if (ip->protocol != IPPROTO_UDP)
		return PASS(PASS_NOT_UDP);
	if (ip->frag_off & bpf_htons(0x3fff)) /* MF or an offset */
		return PASS(PASS_FRAGMENT);
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > end)
		return PASS(PASS_MALFORMED);
	__u32 tot_len = bpf_ntohs(ip->tot_len);
	__u32 udp_len = bpf_ntohs(udp->len);
	if (tot_len != sizeof(*ip) + udp_len || udp_len < sizeof(*udp) ||
	    !datagram_fills_frame(ctx, (void *)ip + tot_len))
		return PASS(PASS_MALFORMED);
	struct frame f = {
		.l3 = ip,
		.udp = udp,
		.payload = (__u8 *)(udp + 1),
		.payload_len = udp_len - sizeof(*udp),
		.ttl = ip->ttl,
		.tclass = ip->tos,
	};
	__builtin_memcpy(f.src, &ip->saddr, 4);
	__builtin_memcpy(f.dst, &ip->daddr, 4);

	if (f.payload_len >= CHANNEL_HEADER && (void *)(f.payload + CHANNEL_HEADER) <= end &&
	    (f.payload[0] & 0xf0) == 0x40) {
		struct c2p_v4_key key = {
			.client_ip = ip->saddr,
			.server_ip = ip->daddr,
			.client_port = udp->source,
			.server_port = udp->dest,
		};
		__builtin_memcpy(&key.channel, f.payload, 2);
		struct c2p_value *to = bpf_map_lookup_elem(&c2p_v4, &key);
		if (to)
			return client_to_peer(ctx, &f, 0, to);
	}
	struct p2c_v4_key pkey = {
		.peer_ip = ip->saddr,
		.relay_ip = ip->daddr,
		.peer_port = udp->source,
		.relay_port = udp->dest,
	};
	struct p2c_value *pto = bpf_map_lookup_elem(&p2c_v4, &pkey);
	if (pto)
		return peer_to_client(ctx, &f, 0, pto);
	if (f.payload_len > 0 && (void *)(f.payload + 1) <= end && (f.payload[0] & 0xc0) == 0)
		return PASS(PASS_STUN);
	return PASS(PASS_NO_ENTRY);
}

static __always_inline int handle_v6(struct xdp_md *ctx, void *l3)
{
	void *end = (void *)(long)ctx->data_end;
	struct ipv6hdr *ip = l3;
	if ((void *)(ip + 1) > end)
		return PASS(PASS_MALFORMED);
	if (ip->version != 6)
		return PASS(PASS_MALFORMED);
	/* Extension headers (fragments included) are userspace's business. */
	if (ip->nexthdr != IPPROTO_UDP)
		return PASS(PASS_NOT_UDP);
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > end)
		return PASS(PASS_MALFORMED);
	__u32 plen = bpf_ntohs(ip->payload_len);
	__u32 udp_len = bpf_ntohs(udp->len);
	if (plen != udp_len || udp_len < sizeof(*udp) ||
	    !datagram_fills_frame(ctx, (void *)(ip + 1) + plen))
		return PASS(PASS_MALFORMED);
	struct frame f = {
		.l3 = ip,
		.udp = udp,
		.payload = (__u8 *)(udp + 1),
		.payload_len = udp_len - sizeof(*udp),
		.ttl = ip->hop_limit,
		.tclass = (ip->priority << 4) | (ip->flow_lbl[0] >> 4),
	};
	__builtin_memcpy(f.src, &ip->saddr, 16);
	__builtin_memcpy(f.dst, &ip->daddr, 16);

	if (f.payload_len >= CHANNEL_HEADER && (void *)(f.payload + CHANNEL_HEADER) <= end &&
	    (f.payload[0] & 0xf0) == 0x40) {
		struct c2p_v6_key key = {
			.client_port = udp->source,
			.server_port = udp->dest,
		};
		__builtin_memcpy(key.client_ip, &ip->saddr, 16);
		__builtin_memcpy(key.server_ip, &ip->daddr, 16);
		__builtin_memcpy(&key.channel, f.payload, 2);
		struct c2p_value *to = bpf_map_lookup_elem(&c2p_v6, &key);
		if (to)
			return client_to_peer(ctx, &f, 1, to);
	}
	struct p2c_v6_key pkey = {
		.peer_port = udp->source,
		.relay_port = udp->dest,
	};
	__builtin_memcpy(pkey.peer_ip, &ip->saddr, 16);
	__builtin_memcpy(pkey.relay_ip, &ip->daddr, 16);
	struct p2c_value *pto = bpf_map_lookup_elem(&p2c_v6, &pkey);
	if (pto)
		return peer_to_client(ctx, &f, 1, pto);
	if (f.payload_len > 0 && (void *)(f.payload + 1) <= end && (f.payload[0] & 0xc0) == 0)
		return PASS(PASS_STUN);
	return PASS(PASS_NO_ENTRY);
}

SEC("xdp")
int turnpike_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return PASS(PASS_NOT_IP);
	/* The stack drops a frame for another host (PACKET_OTHERHOST); relaying it would let a
	 * flooded or sniffed frame through. Multicast and broadcast are never ChannelData. */
	if (!is_own_mac(eth->h_dest))
		return PASS(PASS_OTHER_HOST);
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return handle_v4(ctx, eth + 1);
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return handle_v6(ctx, eth + 1);
	return PASS(PASS_NOT_IP);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
