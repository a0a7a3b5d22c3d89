// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
/*
 * turnpike's kernel fast path: relays the ChannelData of established TURN channels in XDP.
 *
 *   client --ChannelData--> server listen ip:port   becomes  relay ip:port --UDP--> peer
 *   peer   --UDP----------> relay ip:port           becomes  listen ip:port --ChannelData--> client
 *
 * Userspace is authoritative: the daemon (src/net/xdp.rs) installs an entry when the core
 * binds a channel and removes it when the channel or its permission expires or the allocation
 * ends, so this program holds no TURN state of its own and never creates map entries. Ports
 * and addresses come only from those entries: there is no compiled-in port.
 *
 * Anything unusual is XDP_PASSed untouched to the kernel stack and so to userspace, which
 * applies every rule: not IPv4/IPv6 over Ethernet, IP options or IPv6 extension headers,
 * fragments, lengths that do not add up, STUN, unknown channels or peers, TTL about to run
 * out, no route or no neighbour entry yet, a packet that would need fragmenting.
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

/* ---- map layouts (see src/net/xdp.rs: encode_* / the size tests) ---- */

/* client -> peer, IPv4: 16 bytes */
struct c2p_v4_key {
	__be32 client_ip;
	__be32 server_ip;
	__be16 client_port;
	__be16 server_port;
	__be16 channel;
	__u16 pad;
};

/* 24 bytes */
struct c2p_v4_value {
	__u64 counter; /* key into alloc_counters */
	__be32 relay_ip;
	__be32 peer_ip;
	__be16 relay_port;
	__be16 peer_port;
	__u32 pad;
};

/* peer -> client, IPv4: 12 bytes */
struct p2c_v4_key {
	__be32 peer_ip;
	__be32 relay_ip;
	__be16 peer_port;
	__be16 relay_port;
};

/* 24 bytes */
struct p2c_v4_value {
	__u64 counter;
	__be32 client_ip;
	__be32 server_ip;
	__be16 client_port;
	__be16 server_port;
	__be16 channel;
	__u16 pad;
};

/* client -> peer, IPv6: 40 bytes */
struct c2p_v6_key {
	__u8 client_ip[16];
	__u8 server_ip[16];
	__be16 client_port;
	__be16 server_port;
	__be16 channel;
	__u16 pad;
};

/* 48 bytes */
struct c2p_v6_value {
	__u64 counter;
	__u8 relay_ip[16];
	__u8 peer_ip[16];
	__be16 relay_port;
	__be16 peer_port;
	__u32 pad;
};

/* peer -> client, IPv6: 36 bytes */
struct p2c_v6_key {
	__u8 peer_ip[16];
	__u8 relay_ip[16];
	__be16 peer_port;
	__be16 relay_port;
};

/* 48 bytes */
struct p2c_v6_value {
	__u64 counter;
	__u8 client_ip[16];
	__u8 server_ip[16];
	__be16 client_port;
	__be16 server_port;
	__be16 channel;
	__u16 pad;
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
_Static_assert(sizeof(struct c2p_v4_value) == 24, "c2p_v4_value");
_Static_assert(sizeof(struct p2c_v4_key) == 12, "p2c_v4_key");
_Static_assert(sizeof(struct p2c_v4_value) == 24, "p2c_v4_value");
_Static_assert(sizeof(struct c2p_v6_key) == 40, "c2p_v6_key");
_Static_assert(sizeof(struct c2p_v6_value) == 48, "c2p_v6_value");
_Static_assert(sizeof(struct p2c_v6_key) == 36, "p2c_v6_key");
_Static_assert(sizeof(struct p2c_v6_value) == 48, "p2c_v6_value");
_Static_assert(sizeof(struct alloc_counters) == 32, "alloc_counters");

/* Why a frame was passed, or how it left: the index into `datapath_stats`. Keep in the
 * order of `REASONS` in src/net/xdp.rs. */
enum reason {
	PASS_NOT_IP = 0,     /* not IPv4/IPv6 directly over Ethernet (VLAN, ARP, ...) */
	PASS_NOT_UDP,        /* another transport, or IPv6 extension headers */
	PASS_IP_OPTIONS,     /* IPv4 IHL != 5 */
	PASS_FRAGMENT,       /* an IPv4 fragment */
	PASS_MALFORMED,      /* truncated, or IP and UDP lengths disagree */
	PASS_STUN,           /* first two bits 00: a STUN message for userspace */
	PASS_NO_ENTRY,       /* no channel or peer entry for these addresses */
	PASS_LENGTH,         /* ChannelData length field and UDP length disagree */
	PASS_TTL,            /* TTL / hop limit would reach zero */
	PASS_NO_ROUTE,       /* bpf_fib_lookup: no route, forwarding disabled, ... */
	PASS_NO_NEIGH,       /* bpf_fib_lookup: next hop's MAC not yet resolved */
	PASS_FRAG_NEEDED,    /* the result would exceed the egress MTU */
	PASS_NO_CHECKSUM,    /* IPv6 UDP without a checksum (invalid) */
	PASS_ERROR,          /* a helper failed (adjust_head/tail) */
	TX_TO_PEER,          /* ChannelData relayed as UDP to the peer */
	TX_TO_CLIENT,        /* UDP relayed as ChannelData to the client */
	BYTES_TO_PEER,       /* not a reason: application bytes of TX_TO_PEER */
	BYTES_TO_CLIENT,     /* not a reason: application bytes of TX_TO_CLIENT */
	REASONS,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct c2p_v4_key);
	__type(value, struct c2p_v4_value);
} c2p_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct p2c_v4_key);
	__type(value, struct p2c_v4_value);
} p2c_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct c2p_v6_key);
	__type(value, struct c2p_v6_value);
} c2p_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct p2c_v6_key);
	__type(value, struct p2c_v6_value);
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

static __always_inline __u32 add128(__u32 sum, const __u8 *ip)
{
	__u32 w[4];
	__builtin_memcpy(w, ip, 16);
	for (int i = 0; i < 4; i++)
		sum = add32(sum, w[i]);
	return sum;
}

static __always_inline __u32 sub128(__u32 sum, const __u8 *ip)
{
	__u32 w[4];
	__builtin_memcpy(w, ip, 16);
	for (int i = 0; i < 4; i++)
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

/* ---- the next hop ---- */

/* Fills in the Ethernet addresses for a packet from `fib`'s source to its destination and
 * says how it leaves: XDP_TX, XDP_REDIRECT, or a reason to pass (as a negative number). */
static __always_inline int route(struct xdp_md *ctx, struct bpf_fib_lookup *fib, __u8 *smac,
				 __u8 *dmac, __u32 *ifindex)
{
	fib->ifindex = ctx->ingress_ifindex;
	long rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
		break;
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		return -PASS_NO_NEIGH;
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		return -PASS_FRAG_NEEDED;
	default:
		return -PASS_NO_ROUTE;
	}
	__builtin_memcpy(smac, fib->smac, ETH_ALEN);
	__builtin_memcpy(dmac, fib->dmac, ETH_ALEN);
	*ifindex = fib->ifindex;
	return 0;
}

static __always_inline int leave(struct xdp_md *ctx, __u32 ifindex, __u32 reason)
{
	if (ifindex == ctx->ingress_ifindex)
		return count(reason, XDP_TX);
	return count(reason, bpf_redirect(ifindex, 0));
}

static __always_inline void write_eth(struct ethhdr *eth, const __u8 *smac, const __u8 *dmac,
				      __u16 proto)
{
	__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
	eth->h_proto = bpf_htons(proto);
}

/* ---- IPv4 ---- */

/* ChannelData from a client: strip the 4-byte header, readdress from relay to peer. */
static __always_inline int v4_to_peer(struct xdp_md *ctx, struct iphdr *ip, struct udphdr *udp,
				      __u32 payload_len, const struct c2p_v4_value *to)
{
	void *end = (void *)(long)ctx->data_end;
	__u8 *cd = (__u8 *)(udp + 1);
	if ((void *)(cd + CHANNEL_HEADER) > end)
		return PASS(PASS_MALFORMED);
	__u16 chan_raw, len_raw;
	__builtin_memcpy(&chan_raw, cd, 2);
	__builtin_memcpy(&len_raw, cd + 2, 2);
	__u32 data_len = bpf_ntohs(len_raw);
	/* Over UDP the padding is optional (RFC 8656 §12.5): take up to 3 trailing bytes and
	 * send exactly `data_len`; anything else is for userspace to judge. */
	if (payload_len < CHANNEL_HEADER + data_len || payload_len > CHANNEL_HEADER + data_len + 3)
		return PASS(PASS_LENGTH);
	__u32 pad = payload_len - CHANNEL_HEADER - data_len;
	if (ip->ttl <= 1)
		return PASS(PASS_TTL);
	struct alloc_counters *counters = bpf_map_lookup_elem(&alloc_counters, &to->counter);
	if (!counters)
		return PASS(PASS_NO_ENTRY);

	__u16 new_udp_len = sizeof(struct udphdr) + data_len;
	__u16 new_tot_len = sizeof(struct iphdr) + new_udp_len;
	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET;
	fib.tos = ip->tos;
	fib.l4_protocol = IPPROTO_UDP;
	fib.sport = to->relay_port;
	fib.dport = to->peer_port;
	fib.tot_len = new_tot_len;
	fib.ipv4_src = to->relay_ip;
	fib.ipv4_dst = to->peer_ip;
	__u8 smac[ETH_ALEN], dmac[ETH_ALEN];
	__u32 ifindex = 0;
	int rc = route(ctx, &fib, smac, dmac, &ifindex);
	if (rc < 0)
		return PASS(-rc);

	/* The UDP checksum, moved from the old addresses, ports, lengths and header to the new. */
	__u16 old_check = udp->check;
	__u16 new_check = 0; /* the client sent none: IPv4 allows that, and so do we */
	if (old_check) {
		__u32 sum = (__u16)~old_check;
		sum = sub32(sum, ip->saddr);
		sum = sub32(sum, ip->daddr);
		sum = sub16(sum, udp->source);
		sum = sub16(sum, udp->dest);
		sum = sub16(sum, udp->len); /* the pseudo-header's copy */
		sum = sub16(sum, udp->len);
		sum = sub16(sum, chan_raw);
		sum = sub16(sum, len_raw);
		/* Padding bytes leave with the header. */
		for (__u32 i = 0; i < 3; i++) {
			if (i >= pad)
				break;
			__u32 off = CHANNEL_HEADER + data_len + i;
			/* A bound the verifier can see (a linear XDP buffer is a page). */
			if (off > MAX_PAYLOAD_OFFSET)
				return PASS(PASS_LENGTH);
			/* Hide the value so clang keeps the mask the verifier reads the bound from. */
			asm volatile("" : "+r"(off));
			__u8 *b = cd + (off & MAX_PAYLOAD_OFFSET);
			if ((void *)(b + 1) > end)
				return PASS(PASS_MALFORMED);
			sum = sub16(sum, byte_word(*b, off));
		}
		sum = add32(sum, to->relay_ip);
		sum = add32(sum, to->peer_ip);
		sum = add16(sum, to->relay_port);
		sum = add16(sum, to->peer_port);
		sum = add16(sum, bpf_htons(new_udp_len));
		sum = add16(sum, bpf_htons(new_udp_len));
		new_check = udp_check(sum);
	}
	struct iphdr new_ip = *ip;
	new_ip.tot_len = bpf_htons(new_tot_len);
	new_ip.ttl -= 1;
	new_ip.saddr = to->relay_ip;
	new_ip.daddr = to->peer_ip;
	new_ip.check = 0;
	new_ip.check = ipv4_check(&new_ip);

	if (pad && bpf_xdp_adjust_tail(ctx, -(int)pad))
		return PASS(PASS_ERROR);
	if (bpf_xdp_adjust_head(ctx, CHANNEL_HEADER))
		return PASS(PASS_ERROR);
	void *data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *oip = (void *)(eth + 1);
	struct udphdr *oudp = (void *)(oip + 1);
	if ((void *)(oudp + 1) > end)
		return count(PASS_ERROR, XDP_DROP); /* cannot happen: the frame only moved */
	write_eth(eth, smac, dmac, ETH_P_IP);
	*oip = new_ip;
	oudp->source = to->relay_port;
	oudp->dest = to->peer_port;
	oudp->len = bpf_htons(new_udp_len);
	oudp->check = new_check;

	counters->to_peer_packets += 1;
	counters->to_peer_bytes += data_len;
	add_bytes(BYTES_TO_PEER, data_len);
	return leave(ctx, ifindex, TX_TO_PEER);
}

/* A datagram from a peer: prepend the ChannelData header, readdress from listen to client. */
static __always_inline int v4_to_client(struct xdp_md *ctx, struct iphdr *ip, struct udphdr *udp,
					__u32 payload_len, const struct p2c_v4_value *to)
{
	if (ip->ttl <= 1)
		return PASS(PASS_TTL);
	struct alloc_counters *counters = bpf_map_lookup_elem(&alloc_counters, &to->counter);
	if (!counters)
		return PASS(PASS_NO_ENTRY);
	__u16 new_udp_len = sizeof(struct udphdr) + CHANNEL_HEADER + payload_len;
	__u16 new_tot_len = sizeof(struct iphdr) + new_udp_len;
	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET;
	fib.tos = ip->tos;
	fib.l4_protocol = IPPROTO_UDP;
	fib.sport = to->server_port;
	fib.dport = to->client_port;
	fib.tot_len = new_tot_len;
	fib.ipv4_src = to->server_ip;
	fib.ipv4_dst = to->client_ip;
	__u8 smac[ETH_ALEN], dmac[ETH_ALEN];
	__u32 ifindex = 0;
	int rc = route(ctx, &fib, smac, dmac, &ifindex);
	if (rc < 0)
		return PASS(-rc);

	__u16 len_raw = bpf_htons(payload_len);
	__u16 old_check = udp->check;
	__u16 new_check = 0;
	if (old_check) {
		__u32 sum = (__u16)~old_check;
		sum = sub32(sum, ip->saddr);
		sum = sub32(sum, ip->daddr);
		sum = sub16(sum, udp->source);
		sum = sub16(sum, udp->dest);
		sum = sub16(sum, udp->len);
		sum = sub16(sum, udp->len);
		sum = add32(sum, to->server_ip);
		sum = add32(sum, to->client_ip);
		sum = add16(sum, to->server_port);
		sum = add16(sum, to->client_port);
		sum = add16(sum, bpf_htons(new_udp_len));
		sum = add16(sum, bpf_htons(new_udp_len));
		sum = add16(sum, to->channel);
		sum = add16(sum, len_raw);
		new_check = udp_check(sum);
	}
	struct iphdr new_ip = *ip;
	new_ip.tot_len = bpf_htons(new_tot_len);
	new_ip.ttl -= 1;
	new_ip.saddr = to->server_ip;
	new_ip.daddr = to->client_ip;
	new_ip.check = 0;
	new_ip.check = ipv4_check(&new_ip);

	if (bpf_xdp_adjust_head(ctx, -CHANNEL_HEADER))
		return PASS(PASS_ERROR);
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *oip = (void *)(eth + 1);
	struct udphdr *oudp = (void *)(oip + 1);
	__u8 *cd = (__u8 *)(oudp + 1);
	if ((void *)(cd + CHANNEL_HEADER) > end)
		return count(PASS_ERROR, XDP_DROP); /* cannot happen: the frame only grew */
	write_eth(eth, smac, dmac, ETH_P_IP);
	*oip = new_ip;
	oudp->source = to->server_port;
	oudp->dest = to->client_port;
	oudp->len = bpf_htons(new_udp_len);
	oudp->check = new_check;
	__builtin_memcpy(cd, &to->channel, 2);
	__builtin_memcpy(cd + 2, &len_raw, 2);

	counters->from_peer_packets += 1;
	counters->from_peer_bytes += payload_len;
	add_bytes(BYTES_TO_CLIENT, payload_len);
	return leave(ctx, ifindex, TX_TO_CLIENT);
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
	/* Ethernet may pad a short frame past the IP length, never cut it short. */
	if (tot_len != sizeof(*ip) + udp_len || udp_len < sizeof(*udp) ||
	    (void *)ip + tot_len > end)
		return PASS(PASS_MALFORMED);
	__u32 payload_len = udp_len - sizeof(*udp);
	__u8 *payload = (__u8 *)(udp + 1);

	if (payload_len >= CHANNEL_HEADER && (void *)(payload + CHANNEL_HEADER) <= end &&
	    (payload[0] & 0xf0) == 0x40) {
		struct c2p_v4_key key = {
			.client_ip = ip->saddr,
			.server_ip = ip->daddr,
			.client_port = udp->source,
			.server_port = udp->dest,
		};
		__builtin_memcpy(&key.channel, payload, 2);
		struct c2p_v4_value *to = bpf_map_lookup_elem(&c2p_v4, &key);
		if (to)
			return v4_to_peer(ctx, ip, udp, payload_len, to);
	}
	struct p2c_v4_key pkey = {
		.peer_ip = ip->saddr,
		.relay_ip = ip->daddr,
		.peer_port = udp->source,
		.relay_port = udp->dest,
	};
	struct p2c_v4_value *pto = bpf_map_lookup_elem(&p2c_v4, &pkey);
	if (pto)
		return v4_to_client(ctx, ip, udp, payload_len, pto);
	if (payload_len > 0 && (void *)(payload + 1) <= end && (payload[0] & 0xc0) == 0)
		return PASS(PASS_STUN);
	return PASS(PASS_NO_ENTRY);
}

/* ---- IPv6 ---- */

static __always_inline int v6_to_peer(struct xdp_md *ctx, struct ipv6hdr *ip, struct udphdr *udp,
				      __u32 payload_len, const struct c2p_v6_value *to)
{
	void *end = (void *)(long)ctx->data_end;
	__u8 *cd = (__u8 *)(udp + 1);
	if ((void *)(cd + CHANNEL_HEADER) > end)
		return PASS(PASS_MALFORMED);
	__u16 chan_raw, len_raw;
	__builtin_memcpy(&chan_raw, cd, 2);
	__builtin_memcpy(&len_raw, cd + 2, 2);
	__u32 data_len = bpf_ntohs(len_raw);
	if (payload_len < CHANNEL_HEADER + data_len || payload_len > CHANNEL_HEADER + data_len + 3)
		return PASS(PASS_LENGTH);
	__u32 pad = payload_len - CHANNEL_HEADER - data_len;
	if (ip->hop_limit <= 1)
		return PASS(PASS_TTL);
	if (!udp->check)
		return PASS(PASS_NO_CHECKSUM);
	struct alloc_counters *counters = bpf_map_lookup_elem(&alloc_counters, &to->counter);
	if (!counters)
		return PASS(PASS_NO_ENTRY);

	__u16 new_udp_len = sizeof(struct udphdr) + data_len;
	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET6;
	fib.l4_protocol = IPPROTO_UDP;
	fib.sport = to->relay_port;
	fib.dport = to->peer_port;
	fib.tot_len = sizeof(struct ipv6hdr) + new_udp_len;
	__builtin_memcpy(fib.ipv6_src, to->relay_ip, 16);
	__builtin_memcpy(fib.ipv6_dst, to->peer_ip, 16);
	__u8 smac[ETH_ALEN], dmac[ETH_ALEN];
	__u32 ifindex = 0;
	int rc = route(ctx, &fib, smac, dmac, &ifindex);
	if (rc < 0)
		return PASS(-rc);

	__u32 sum = (__u16)~udp->check;
	sum = sub128(sum, (const __u8 *)&ip->saddr);
	sum = sub128(sum, (const __u8 *)&ip->daddr);
	sum = sub16(sum, udp->source);
	sum = sub16(sum, udp->dest);
	sum = sub16(sum, udp->len);
	sum = sub16(sum, udp->len);
	sum = sub16(sum, chan_raw);
	sum = sub16(sum, len_raw);
	for (__u32 i = 0; i < 3; i++) {
		if (i >= pad)
			break;
		__u32 off = CHANNEL_HEADER + data_len + i;
		/* A bound the verifier can see (a linear XDP buffer is a page). */
		if (off > MAX_PAYLOAD_OFFSET)
			return PASS(PASS_LENGTH);
		/* Hide the value so clang keeps the mask the verifier reads the bound from. */
		asm volatile("" : "+r"(off));
		__u8 *b = cd + (off & MAX_PAYLOAD_OFFSET);
		if ((void *)(b + 1) > end)
			return PASS(PASS_MALFORMED);
		sum = sub16(sum, byte_word(*b, off));
	}
	sum = add128(sum, to->relay_ip);
	sum = add128(sum, to->peer_ip);
	sum = add16(sum, to->relay_port);
	sum = add16(sum, to->peer_port);
	sum = add16(sum, bpf_htons(new_udp_len));
	sum = add16(sum, bpf_htons(new_udp_len));
	__u16 new_check = udp_check(sum);

	struct ipv6hdr new_ip = *ip;
	new_ip.payload_len = bpf_htons(new_udp_len);
	new_ip.hop_limit -= 1;
	__builtin_memcpy(&new_ip.saddr, to->relay_ip, 16);
	__builtin_memcpy(&new_ip.daddr, to->peer_ip, 16);

	if (pad && bpf_xdp_adjust_tail(ctx, -(int)pad))
		return PASS(PASS_ERROR);
	if (bpf_xdp_adjust_head(ctx, CHANNEL_HEADER))
		return PASS(PASS_ERROR);
	void *data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *oip = (void *)(eth + 1);
	struct udphdr *oudp = (void *)(oip + 1);
	if ((void *)(oudp + 1) > end)
		return count(PASS_ERROR, XDP_DROP);
	write_eth(eth, smac, dmac, ETH_P_IPV6);
	*oip = new_ip;
	oudp->source = to->relay_port;
	oudp->dest = to->peer_port;
	oudp->len = bpf_htons(new_udp_len);
	oudp->check = new_check;

	counters->to_peer_packets += 1;
	counters->to_peer_bytes += data_len;
	add_bytes(BYTES_TO_PEER, data_len);
	return leave(ctx, ifindex, TX_TO_PEER);
}

static __always_inline int v6_to_client(struct xdp_md *ctx, struct ipv6hdr *ip,
					struct udphdr *udp, __u32 payload_len,
					const struct p2c_v6_value *to)
{
	if (ip->hop_limit <= 1)
		return PASS(PASS_TTL);
	if (!udp->check)
		return PASS(PASS_NO_CHECKSUM);
	struct alloc_counters *counters = bpf_map_lookup_elem(&alloc_counters, &to->counter);
	if (!counters)
		return PASS(PASS_NO_ENTRY);
	__u16 new_udp_len = sizeof(struct udphdr) + CHANNEL_HEADER + payload_len;
	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET6;
	fib.l4_protocol = IPPROTO_UDP;
	fib.sport = to->server_port;
	fib.dport = to->client_port;
	fib.tot_len = sizeof(struct ipv6hdr) + new_udp_len;
	__builtin_memcpy(fib.ipv6_src, to->server_ip, 16);
	__builtin_memcpy(fib.ipv6_dst, to->client_ip, 16);
	__u8 smac[ETH_ALEN], dmac[ETH_ALEN];
	__u32 ifindex = 0;
	int rc = route(ctx, &fib, smac, dmac, &ifindex);
	if (rc < 0)
		return PASS(-rc);

	__u16 len_raw = bpf_htons(payload_len);
	__u32 sum = (__u16)~udp->check;
	sum = sub128(sum, (const __u8 *)&ip->saddr);
	sum = sub128(sum, (const __u8 *)&ip->daddr);
	sum = sub16(sum, udp->source);
	sum = sub16(sum, udp->dest);
	sum = sub16(sum, udp->len);
	sum = sub16(sum, udp->len);
	sum = add128(sum, to->server_ip);
	sum = add128(sum, to->client_ip);
	sum = add16(sum, to->server_port);
	sum = add16(sum, to->client_port);
	sum = add16(sum, bpf_htons(new_udp_len));
	sum = add16(sum, bpf_htons(new_udp_len));
	sum = add16(sum, to->channel);
	sum = add16(sum, len_raw);
	__u16 new_check = udp_check(sum);

	struct ipv6hdr new_ip = *ip;
	new_ip.payload_len = bpf_htons(new_udp_len);
	new_ip.hop_limit -= 1;
	__builtin_memcpy(&new_ip.saddr, to->server_ip, 16);
	__builtin_memcpy(&new_ip.daddr, to->client_ip, 16);

	if (bpf_xdp_adjust_head(ctx, -CHANNEL_HEADER))
		return PASS(PASS_ERROR);
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *oip = (void *)(eth + 1);
	struct udphdr *oudp = (void *)(oip + 1);
	__u8 *cd = (__u8 *)(oudp + 1);
	if ((void *)(cd + CHANNEL_HEADER) > end)
		return count(PASS_ERROR, XDP_DROP);
	write_eth(eth, smac, dmac, ETH_P_IPV6);
	*oip = new_ip;
	oudp->source = to->server_port;
	oudp->dest = to->client_port;
	oudp->len = bpf_htons(new_udp_len);
	oudp->check = new_check;
	__builtin_memcpy(cd, &to->channel, 2);
	__builtin_memcpy(cd + 2, &len_raw, 2);

	counters->from_peer_packets += 1;
	counters->from_peer_bytes += payload_len;
	add_bytes(BYTES_TO_CLIENT, payload_len);
	return leave(ctx, ifindex, TX_TO_CLIENT);
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
	if (plen != udp_len || udp_len < sizeof(*udp) || (void *)(ip + 1) + plen > end)
		return PASS(PASS_MALFORMED);
	__u32 payload_len = udp_len - sizeof(*udp);
	__u8 *payload = (__u8 *)(udp + 1);

	if (payload_len >= CHANNEL_HEADER && (void *)(payload + CHANNEL_HEADER) <= end &&
	    (payload[0] & 0xf0) == 0x40) {
		struct c2p_v6_key key = {
			.client_port = udp->source,
			.server_port = udp->dest,
		};
		__builtin_memcpy(key.client_ip, &ip->saddr, 16);
		__builtin_memcpy(key.server_ip, &ip->daddr, 16);
		__builtin_memcpy(&key.channel, payload, 2);
		struct c2p_v6_value *to = bpf_map_lookup_elem(&c2p_v6, &key);
		if (to)
			return v6_to_peer(ctx, ip, udp, payload_len, to);
	}
	struct p2c_v6_key pkey = {
		.peer_port = udp->source,
		.relay_port = udp->dest,
	};
	__builtin_memcpy(pkey.peer_ip, &ip->saddr, 16);
	__builtin_memcpy(pkey.relay_ip, &ip->daddr, 16);
	struct p2c_v6_value *pto = bpf_map_lookup_elem(&p2c_v6, &pkey);
	if (pto)
		return v6_to_client(ctx, ip, udp, payload_len, pto);
	if (payload_len > 0 && (void *)(payload + 1) <= end && (payload[0] & 0xc0) == 0)
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
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return handle_v4(ctx, eth + 1);
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return handle_v6(ctx, eth + 1);
	return PASS(PASS_NOT_IP);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
