// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// fqdnd datapath: tc (TCX) programs on the node side of each endpoint's veth.
//
// fqdnd_from_pod  (tcx ingress of the node-side veth = packets the pod sends)
//   0. a source address that is not the endpoint's -> drop (reason SPOOFED), whatever the policy
//   1. egress deny rules      -> drop (reason DENY)
//   2. DNS redirect rules     -> bpf_sk_assign to the proxy's transparent socket + skb->mark,
//                                so the policy route delivers the packet locally
//   3. egress default deny    -> allow map (static + learned) or conntrack reply, else drop
// fqdnd_to_pod    (tcx egress of the node-side veth = packets the pod receives)
//   1. replies to what the pod opened (conntrack)  -> pass
//   2. ingress deny rules   -> drop (reason DENY, direction INGRESS)
//   3. ingress default deny -> ingress allow map, else drop (direction INGRESS)
//   and records the connections opened towards the pod, so the pod's replies pass egress
//   default deny.
//
// The layouts below are mirrored in ebpf-redirect/src/maps.rs; change both together.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/icmpv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define EP_DEFAULT_DENY 1
#define EP_REDIRECT_DNS 2
#define EP_HAS_DENY 4
#define EP_INGRESS_DEFAULT_DENY 8
#define EP_HAS_INGRESS_DENY 16
#define EP_CHECK_SOURCE 32
// Audit mode: what policy would drop passes, reported with VF_AUDIT.
#define EP_AUDIT 64
// Ingress is policed at all: what the pod opens must be tracked so its replies come back in.
#define EP_INGRESS (EP_INGRESS_DEFAULT_DENY | EP_HAS_INGRESS_DENY)

#define REASON_POLICY_DENIED 1
#define REASON_POLICY_DENY 2
#define REASON_PROXY_UNAVAILABLE 3
#define REASON_SPOOFED 4

#define CT_INBOUND 1
#define CT_OUTBOUND 2
// A flow audit mode let through: reported once, passed silently after.
#define CT_AUDITED 4

#define DIR_EGRESS 0
#define DIR_INGRESS 1

#define PROXY_HAS_V4 1
#define PROXY_HAS_V6 2
// --deny-response reject: denied TCP gets a RST, denied UDP an ICMP port unreachable.
#define PROXY_REJECT 4

// What became of a reported packet besides its drop reason.
#define VF_REJECTED 1
#define VF_AUDIT 2

// Set on the replies the program makes itself, so the to-pod program lets them through: the
// pod never opened anything they could be a reply to. The veth scrubs it on the way into the pod.
#define REJECT_MARK 0xfd4d0001

// The last-used stamp is a shared cache line: write it at most this often per entry.
#define STAMP_GRANULARITY_NS 100000000ULL
// An inbound connection idle this long no longer lets the pod answer (LRU eviction aside, entries
// are never deleted: FIN/RST tracking is not worth its cost here).
#define CT_LIFETIME_NS (600ULL * 1000000000ULL)

enum counter {
	C_SEEN = 0,
	C_ALLOWED,
	C_DROPPED_DENIED,
	C_DROPPED_DENY,
	C_REDIRECTED,
	C_DROPPED_NO_PROXY,
	C_CT_REPLY,
	C_EVENTS_LOST,
	C_CT_CREATED,
	C_INGRESS_DROPPED_DENIED,
	C_INGRESS_DROPPED_DENY,
	C_INGRESS_CT_REPLY,
	C_DROPPED_SPOOFED,
	C_REJECTED,
	C_AUDITED,
	C_MAX = 16,
};

struct ep_cfg {
	__u32 endpoint;
	__u32 flags;
};

struct proxy_cfg {
	__u32 addr4; // network order
	__u8 addr6[16];
	__u16 udp_port; // host order
	__u16 tcp_port; // host order
	__u32 mark;
	__u32 flags;
};

// LPM keys: the first 64 bits (endpoint, proto, pad, port) are always fully inside the prefix,
// so they match exactly; the address is the prefix part. prefixlen = 64 + address prefix.
struct lpm_key4 {
	__u32 prefixlen;
	__u32 endpoint;
	__u8 proto; // 0 = any protocol
	__u8 pad;
	__u16 port; // host order, 0 = any port
	__u32 addr; // network order
};

struct lpm_key6 {
	__u32 prefixlen;
	__u32 endpoint;
	__u8 proto;
	__u8 pad;
	__u16 port;
	__u8 addr[16];
};

struct rule_val {
	__u64 last_used; // bpf_ktime_get_ns of the last packet that matched, 0 = never
	__u32 flags;     // owner bits, userspace only
	__u32 pad;
	__u64 expires; // learned entries: bpf_ktime_get_ns when the lookups behind it run out, 0 =
		       // unknown; userspace only (a restarted agent reads it back)
};

struct ct_key {
	__u8 saddr[16]; // the pod's side (IPv4 in the first 4 bytes)
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u32 ifindex;
	__u8 proto;
	__u8 family;
	__u8 pad[2];
};

struct ct_val {
	__u64 last_seen;
	__u32 flags;
	__u32 pad;
};

struct drop_event {
	__u64 ktime;
	__u32 endpoint;
	__u32 ifindex;
	__u8 family;
	__u8 proto;
	__u8 tcp_flags;
	__u8 reason;
	__u16 sport;
	__u16 dport;
	__u8 saddr[16];
	__u8 daddr[16];
	__u8 direction; // DIR_EGRESS: the pod sent it; DIR_INGRESS: it was going to the pod
	__u8 verdict;   // VF_* bits
	__u8 pad[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32); // ifindex of the node-side veth
	__type(value, struct ep_cfg);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fqdnd_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct proxy_cfg);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fqdnd_proxy SEC(".maps");

#define LPM_MAP(name, keytype, size)                                                               \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);                                               \
		__uint(max_entries, size);                                                         \
		__type(key, struct keytype);                                                       \
		__type(value, struct rule_val);                                                    \
		__uint(map_flags, BPF_F_NO_PREALLOC);                                              \
		__uint(pinning, LIBBPF_PIN_BY_NAME);                                               \
	} name SEC(".maps")

LPM_MAP(fqdnd_allow4, lpm_key4, 262144);
LPM_MAP(fqdnd_allow6, lpm_key6, 262144);
LPM_MAP(fqdnd_deny4, lpm_key4, 65536);
LPM_MAP(fqdnd_deny6, lpm_key6, 65536);
LPM_MAP(fqdnd_redir4, lpm_key4, 16384);
LPM_MAP(fqdnd_redir6, lpm_key6, 16384);
// Ingress rules: the address is the peer's (the packet's source), the port the pod's.
LPM_MAP(fqdnd_ingress4, lpm_key4, 65536);
LPM_MAP(fqdnd_ingress6, lpm_key6, 65536);
LPM_MAP(fqdnd_ingress_deny4, lpm_key4, 16384);
LPM_MAP(fqdnd_ingress_deny6, lpm_key6, 16384);
// The endpoint's own addresses (proto 0, port 0, host prefixes): what it may send from.
LPM_MAP(fqdnd_src4, lpm_key4, 16384);
LPM_MAP(fqdnd_src6, lpm_key6, 16384);

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, struct ct_key);
	__type(value, struct ct_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fqdnd_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fqdnd_drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fqdnd_counters SEC(".maps");

struct flow {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport; // host order
	__u16 dport; // host order
	__u8 family; // 4 or 6
	__u8 proto;
	__u8 tcp_flags;
	__u8 has_ports;
	__u8 icmp_type; // ICMP / ICMPv6 type of a first fragment, else 0
	__u8 pad[3];
};

static __always_inline void count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&fqdnd_counters, &idx);
	if (c)
		*c += 1;
}

static __always_inline void stamp(struct rule_val *v)
{
	__u64 now = bpf_ktime_get_ns();
	if (now - v->last_used > STAMP_GRANULARITY_NS)
		v->last_used = now;
}

// Returns 1 for an IP packet parsed into f, 0 for a packet the program does not police (not IP,
// IPv6 neighbour discovery), -1 for a malformed IP packet.
static __always_inline int parse(struct __sk_buff *skb, struct flow *f)
{
	__u32 off = sizeof(struct ethhdr);
	__u16 eth_proto = skb->protocol;
	int frag = 0;

	if (eth_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0)
			return -1;
		if (ip.ihl < 5)
			return -1;
		f->family = 4;
		f->proto = ip.protocol;
		__builtin_memcpy(f->saddr, &ip.saddr, 4);
		__builtin_memcpy(f->daddr, &ip.daddr, 4);
		frag = (bpf_ntohs(ip.frag_off) & 0x1fff) != 0;
		off += ip.ihl * 4;
	} else if (eth_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0)
			return -1;
		f->family = 6;
		__builtin_memcpy(f->saddr, &ip6.saddr, 16);
		__builtin_memcpy(f->daddr, &ip6.daddr, 16);
		off += sizeof(ip6);
		__u8 next = ip6.nexthdr;
		// Extension headers: bounded walk; anything deeper is judged on L3 alone.
#pragma unroll
		for (int i = 0; i < 4; i++) {
			if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS) {
				__u8 hdr[2];
				if (bpf_skb_load_bytes(skb, off, hdr, 2) < 0)
					return -1;
				next = hdr[0];
				off += (hdr[1] + 1) * 8;
			} else if (next == IPPROTO_FRAGMENT) {
				__u8 hdr[4];
				if (bpf_skb_load_bytes(skb, off, hdr, 4) < 0)
					return -1;
				next = hdr[0];
				frag = ((hdr[2] << 8 | hdr[3]) & 0xfff8) != 0;
				off += 8;
			}
		}
		f->proto = next;
		if (next == IPPROTO_ICMPV6 && !frag) {
			__u8 type;
			if (bpf_skb_load_bytes(skb, off, &type, 1) < 0)
				return -1;
			// Neighbour discovery (133-137) and multicast listener reports/queries (130-132,
			// 143): link-local control traffic the pod needs to reach its gateway at all.
			if ((type >= 130 && type <= 137) || type == 143)
				return 0;
			f->icmp_type = type;
		}
	} else {
		return 0;
	}

	// Non-first fragments carry no ports: judged by L3 (port 0) rules only.
	if (frag)
		return 1;
	if (f->proto == IPPROTO_ICMP) {
		if (bpf_skb_load_bytes(skb, off, &f->icmp_type, 1) < 0)
			return -1;
	} else if (f->proto == IPPROTO_TCP) {
		__u8 th[14];
		if (bpf_skb_load_bytes(skb, off, th, sizeof(th)) < 0)
			return -1;
		f->sport = (th[0] << 8) | th[1];
		f->dport = (th[2] << 8) | th[3];
		f->tcp_flags = th[13];
		f->has_ports = 1;
	} else if (f->proto == IPPROTO_UDP) {
		__u8 uh[4];
		if (bpf_skb_load_bytes(skb, off, uh, sizeof(uh)) < 0)
			return -1;
		f->sport = (uh[0] << 8) | uh[1];
		f->dport = (uh[2] << 8) | uh[3];
		f->has_ports = 1;
	}
	return 1;
}

// `addr` is the peer: the destination of what the pod sends, the source of what it receives.
static __always_inline struct rule_val *lookup_one(void *map4, void *map6, __u32 endpoint, struct flow *f,
						   __u8 *addr, __u8 proto, __u16 port)
{
	if (f->family == 4) {
		struct lpm_key4 k = {.prefixlen = 64 + 32, .endpoint = endpoint, .proto = proto, .port = port};
		__builtin_memcpy(&k.addr, addr, 4);
		return bpf_map_lookup_elem(map4, &k);
	}
	struct lpm_key6 k = {.prefixlen = 64 + 128, .endpoint = endpoint, .proto = proto, .port = port};
	__builtin_memcpy(k.addr, addr, 16);
	return bpf_map_lookup_elem(map6, &k);
}

// Port-specific rules first, then protocol-wide, then L3-only. "Any protocol with a port" is
// stored by userspace as one TCP and one UDP entry, so three lookups cover every rule shape.
// The port is always the pod's peer-facing one: the destination port (egress: the peer's;
// ingress: the pod's own).
static __always_inline struct rule_val *lookup_rules(void *map4, void *map6, __u32 endpoint, struct flow *f,
						     __u8 *addr)
{
	struct rule_val *v;
	if (f->has_ports) {
		v = lookup_one(map4, map6, endpoint, f, addr, f->proto, f->dport);
		if (v)
			return v;
	}
	v = lookup_one(map4, map6, endpoint, f, addr, f->proto, 0);
	if (v)
		return v;
	return lookup_one(map4, map6, endpoint, f, addr, 0, 0);
}

static __always_inline void ct_key_from(struct ct_key *k, struct flow *f, __u32 ifindex, int reverse)
{
	if (reverse) {
		__builtin_memcpy(k->saddr, f->daddr, 16);
		__builtin_memcpy(k->daddr, f->saddr, 16);
		k->sport = f->dport;
		k->dport = f->sport;
	} else {
		__builtin_memcpy(k->saddr, f->saddr, 16);
		__builtin_memcpy(k->daddr, f->daddr, 16);
		k->sport = f->sport;
		k->dport = f->dport;
	}
	k->ifindex = ifindex;
	k->proto = f->proto;
	k->family = f->family;
}

static __always_inline void report(struct __sk_buff *skb, struct ep_cfg *ep, struct flow *f, __u8 reason,
				   __u8 direction, __u8 verdict)
{
	struct drop_event *e = bpf_ringbuf_reserve(&fqdnd_drops, sizeof(*e), 0);
	if (e) {
		e->ktime = bpf_ktime_get_ns();
		e->endpoint = ep->endpoint;
		e->ifindex = skb->ifindex;
		e->family = f->family;
		e->proto = f->proto;
		e->tcp_flags = f->tcp_flags;
		e->reason = reason;
		e->sport = f->sport;
		e->dport = f->dport;
		__builtin_memcpy(e->saddr, f->saddr, 16);
		__builtin_memcpy(e->daddr, f->daddr, 16);
		e->direction = direction;
		e->verdict = verdict;
		__builtin_memset(e->pad, 0, sizeof(e->pad));
		bpf_ringbuf_submit(e, 0);
	} else {
		count(C_EVENTS_LOST);
	}
	if (verdict & VF_AUDIT) {
		count(C_AUDITED);
		return;
	}
	if (direction == DIR_INGRESS)
		count(reason == REASON_POLICY_DENY ? C_INGRESS_DROPPED_DENY : C_INGRESS_DROPPED_DENIED);
	else if (reason == REASON_POLICY_DENY)
		count(C_DROPPED_DENY);
	else if (reason == REASON_PROXY_UNAVAILABLE)
		count(C_DROPPED_NO_PROXY);
	else if (reason == REASON_SPOOFED)
		count(C_DROPPED_SPOOFED);
	else
		count(C_DROPPED_DENIED);
	if (verdict & VF_REJECTED)
		count(C_REJECTED);
}

static __always_inline int drop_dir(struct __sk_buff *skb, struct ep_cfg *ep, struct flow *f, __u8 reason,
				    __u8 direction)
{
	report(skb, ep, f, reason, direction, 0);
	return TC_ACT_SHOT;
}

// Audit mode: a packet policy would drop passes; its flow is reported once (the first packet)
// and recorded so the rest of it, and its replies, pass silently.
static __always_inline int audit(struct __sk_buff *skb, struct ep_cfg *ep, struct flow *f, __u8 reason,
				 __u8 direction)
{
	struct ct_key k = {};
	ct_key_from(&k, f, skb->ifindex, direction == DIR_INGRESS);
	struct ct_val *c = bpf_map_lookup_elem(&fqdnd_ct, &k);
	__u64 now = bpf_ktime_get_ns();
	if (c && (c->flags & CT_AUDITED) && now - c->last_seen < CT_LIFETIME_NS) {
		if (now - c->last_seen > STAMP_GRANULARITY_NS)
			c->last_seen = now;
		return TC_ACT_UNSPEC;
	}
	report(skb, ep, f, reason, direction, VF_AUDIT);
	struct ct_val cv = {.last_seen = now, .flags = CT_AUDITED | (direction == DIR_INGRESS ? CT_INBOUND : CT_OUTBOUND)};
	bpf_map_update_elem(&fqdnd_ct, &k, &cv, BPF_ANY);
	return TC_ACT_UNSPEC;
}

// An ingress policy denial: dropped, or passed in audit mode.
static __always_inline int deny_in(struct __sk_buff *skb, struct ep_cfg *ep, struct flow *f, __u8 reason)
{
	if (ep->flags & EP_AUDIT)
		return audit(skb, ep, f, reason, DIR_INGRESS);
	report(skb, ep, f, reason, DIR_INGRESS, 0);
	return TC_ACT_SHOT;
}

static __always_inline int drop(struct __sk_buff *skb, struct ep_cfg *ep, struct flow *f, __u8 reason)
{
	return drop_dir(skb, ep, f, reason, DIR_EGRESS);
}

// Remember a flow the pod sends (pod-side key) so that what comes back passes ingress policy,
// and so that an answer is never mistaken for a new connection towards the pod.
static __always_inline void ct_outbound(struct flow *f, __u32 ifindex)
{
	struct ct_key k = {};
	ct_key_from(&k, f, ifindex, 0);
	struct ct_val *c = bpf_map_lookup_elem(&fqdnd_ct, &k);
	__u64 now = bpf_ktime_get_ns();
	if (!c) {
		struct ct_val cv = {.last_seen = now, .flags = CT_OUTBOUND};
		bpf_map_update_elem(&fqdnd_ct, &k, &cv, BPF_ANY);
	} else if (now - c->last_seen > STAMP_GRANULARITY_NS) {
		c->last_seen = now;
	}
}

static __always_inline __u16 csum_fold(__s64 csum)
{
	__u32 sum = (__u32)csum;
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

// ICMPv4 header of an error message (linux/icmp.h drags in libc headers).
struct icmp4 {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 unused;
};

struct pseudo4 {
	__be32 saddr;
	__be32 daddr;
	__u8 zero;
	__u8 proto;
	__be16 len;
};

// The IPv6 pseudo header after the two addresses.
struct pseudo6_tail {
	__be32 len;
	__u8 zero[3];
	__u8 next;
};

// The reply's Ethernet header: back to the pod from the address it sent to (its gateway's).
static __always_inline int reply_eth(struct __sk_buff *skb)
{
	struct ethhdr eth;
	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
		return -1;
	struct ethhdr back = {.h_proto = eth.h_proto};
	__builtin_memcpy(back.h_dest, eth.h_source, ETH_ALEN);
	__builtin_memcpy(back.h_source, eth.h_dest, ETH_ALEN);
	return bpf_skb_store_bytes(skb, 0, &back, sizeof(back), 0);
}

// The RST answering a denied TCP segment (RFC 9293 3.10.7.1): seq = its ACK if it had one,
// else ack = its seq + its length. Never for a RST.
static __always_inline int rst_for(struct tcphdr *th, __u32 payload, struct tcphdr *r)
{
	if (th->rst)
		return -1;
	__builtin_memset(r, 0, sizeof(*r));
	r->source = th->dest;
	r->dest = th->source;
	r->doff = 5;
	r->rst = 1;
	if (th->ack) {
		r->seq = th->ack_seq;
	} else {
		r->ack = 1;
		r->ack_seq = bpf_htonl(bpf_ntohl(th->seq) + payload + th->syn + th->fin);
	}
	return 0;
}

static __always_inline int reject_tcp4(struct __sk_buff *skb)
{
	struct iphdr ip;
	struct tcphdr th, r;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0 || ip.ihl != 5)
		return -1;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(ip), &th, sizeof(th)) < 0)
		return -1;
	__u32 hdrs = sizeof(ip) + th.doff * 4;
	__u32 tot = bpf_ntohs(ip.tot_len);
	if (rst_for(&th, tot > hdrs ? tot - hdrs : 0, &r) < 0)
		return -1;
	struct iphdr nip = {.version = 4, .ihl = 5, .ttl = 64, .protocol = IPPROTO_TCP};
	nip.tot_len = bpf_htons(sizeof(nip) + sizeof(r));
	nip.frag_off = bpf_htons(0x4000);
	nip.saddr = ip.daddr;
	nip.daddr = ip.saddr;
	nip.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&nip, sizeof(nip), 0));
	struct pseudo4 ph = {.saddr = nip.saddr, .daddr = nip.daddr, .proto = IPPROTO_TCP, .len = bpf_htons(sizeof(r))};
	__s64 c = bpf_csum_diff(0, 0, (__be32 *)&ph, sizeof(ph), 0);
	if (c < 0)
		return -1;
	c = bpf_csum_diff(0, 0, (__be32 *)&r, sizeof(r), (__u32)c);
	if (c < 0)
		return -1;
	r.check = csum_fold(c);
	if (reply_eth(skb) < 0 || bpf_skb_change_tail(skb, ETH_HLEN + sizeof(nip) + sizeof(r), 0) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &nip, sizeof(nip), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(nip), &r, sizeof(r), 0) < 0)
		return -1;
	return 0;
}

static __always_inline int reject_tcp6(struct __sk_buff *skb)
{
	struct ipv6hdr ip6;
	struct tcphdr th, r;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0 || ip6.nexthdr != IPPROTO_TCP)
		return -1;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(ip6), &th, sizeof(th)) < 0)
		return -1;
	__u32 len = bpf_ntohs(ip6.payload_len);
	__u32 hdr = th.doff * 4;
	if (rst_for(&th, len > hdr ? len - hdr : 0, &r) < 0)
		return -1;
	struct ipv6hdr nip6 = {.version = 6, .nexthdr = IPPROTO_TCP, .hop_limit = 64};
	nip6.payload_len = bpf_htons(sizeof(r));
	nip6.saddr = ip6.daddr;
	nip6.daddr = ip6.saddr;
	struct pseudo6_tail pt = {.len = bpf_htonl(sizeof(r)), .next = IPPROTO_TCP};
	__s64 c = bpf_csum_diff(0, 0, (__be32 *)&nip6.saddr, 32, 0);
	if (c < 0)
		return -1;
	c = bpf_csum_diff(0, 0, (__be32 *)&pt, sizeof(pt), (__u32)c);
	if (c < 0)
		return -1;
	c = bpf_csum_diff(0, 0, (__be32 *)&r, sizeof(r), (__u32)c);
	if (c < 0)
		return -1;
	r.check = csum_fold(c);
	if (reply_eth(skb) < 0 || bpf_skb_change_tail(skb, ETH_HLEN + sizeof(nip6) + sizeof(r), 0) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &nip6, sizeof(nip6), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(nip6), &r, sizeof(r), 0) < 0)
		return -1;
	return 0;
}

// ICMP destination unreachable, port unreachable, quoting the datagram's IP header and its
// first 8 bytes (RFC 792). Never for a multicast or broadcast destination.
static __always_inline int reject_udp4(struct __sk_buff *skb)
{
	struct iphdr ip;
	__u8 l4[8];
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0 || ip.ihl != 5)
		return -1;
	__u32 dst = bpf_ntohl(ip.daddr);
	if ((dst >> 28) >= 0xe) // 224.0.0.0/4 multicast, 240.0.0.0/4 and the broadcast address
		return -1;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(ip), l4, sizeof(l4)) < 0)
		return -1;
	struct icmp4 ic = {.type = 3, .code = 3};
	struct iphdr nip = {.version = 4, .ihl = 5, .ttl = 64, .protocol = IPPROTO_ICMP};
	nip.tot_len = bpf_htons(sizeof(nip) + sizeof(ic) + sizeof(ip) + sizeof(l4));
	nip.saddr = ip.daddr;
	nip.daddr = ip.saddr;
	nip.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&nip, sizeof(nip), 0));
	__s64 c = bpf_csum_diff(0, 0, (__be32 *)&ic, sizeof(ic), 0);
	if (c < 0)
		return -1;
	c = bpf_csum_diff(0, 0, (__be32 *)&ip, sizeof(ip), (__u32)c);
	if (c < 0)
		return -1;
	c = bpf_csum_diff(0, 0, (__be32 *)l4, sizeof(l4), (__u32)c);
	if (c < 0)
		return -1;
	ic.checksum = csum_fold(c);
	__u32 off = ETH_HLEN;
	if (reply_eth(skb) < 0 || bpf_skb_change_tail(skb, off + sizeof(nip) + sizeof(ic) + sizeof(ip) + sizeof(l4), 0) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, off, &nip, sizeof(nip), 0) < 0)
		return -1;
	off += sizeof(nip);
	if (bpf_skb_store_bytes(skb, off, &ic, sizeof(ic), 0) < 0)
		return -1;
	off += sizeof(ic);
	if (bpf_skb_store_bytes(skb, off, &ip, sizeof(ip), 0) < 0)
		return -1;
	off += sizeof(ip);
	return bpf_skb_store_bytes(skb, off, l4, sizeof(l4), 0) < 0 ? -1 : 0;
}

// ICMPv6 destination unreachable, port unreachable (RFC 4443), quoting the datagram's IPv6
// header and its first 8 bytes. Never for a multicast destination.
static __always_inline int reject_udp6(struct __sk_buff *skb)
{
	struct ipv6hdr ip6;
	__u8 l4[8];
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0 || ip6.nexthdr != IPPROTO_UDP)
		return -1;
	if (ip6.daddr.in6_u.u6_addr8[0] == 0xff)
		return -1;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(ip6), l4, sizeof(l4)) < 0)
		return -1;
	struct icmp6hdr ic = {.icmp6_type = 1, .icmp6_code = 4};
	__u32 body = sizeof(ic) + sizeof(ip6) + sizeof(l4);
	struct ipv6hdr nip6 = {.version = 6, .nexthdr = IPPROTO_ICMPV6, .hop_limit = 64};
	nip6.payload_len = bpf_htons(body);
	nip6.saddr = ip6.daddr;
	nip6.daddr = ip6.saddr;
	struct pseudo6_tail pt = {.len = bpf_htonl(body), .next = IPPROTO_ICMPV6};
	__s64 c = bpf_csum_diff(0, 0, (__be32 *)&nip6.saddr, 32, 0);
	if (c < 0)
		return -1;
	c = bpf_csum_diff(0, 0, (__be32 *)&pt, sizeof(pt), (__u32)c);
	if (c < 0)
		return -1;
	c = bpf_csum_diff(0, 0, (__be32 *)&ic, sizeof(ic), (__u32)c);
	if (c < 0)
		return -1;
	c = bpf_csum_diff(0, 0, (__be32 *)&ip6, sizeof(ip6), (__u32)c);
	if (c < 0)
		return -1;
	c = bpf_csum_diff(0, 0, (__be32 *)l4, sizeof(l4), (__u32)c);
	if (c < 0)
		return -1;
	ic.icmp6_cksum = csum_fold(c);
	__u32 off = ETH_HLEN;
	if (reply_eth(skb) < 0 || bpf_skb_change_tail(skb, off + sizeof(nip6) + body, 0) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, off, &nip6, sizeof(nip6), 0) < 0)
		return -1;
	off += sizeof(nip6);
	if (bpf_skb_store_bytes(skb, off, &ic, sizeof(ic), 0) < 0)
		return -1;
	off += sizeof(ic);
	if (bpf_skb_store_bytes(skb, off, &ip6, sizeof(ip6), 0) < 0)
		return -1;
	off += sizeof(ip6);
	return bpf_skb_store_bytes(skb, off, l4, sizeof(l4), 0) < 0 ? -1 : 0;
}

// Turn the packet into the reply that tells the pod "no" at once. Returns 0 when the skb now
// holds that reply. Fragments and protocols without ports get none.
static __always_inline int make_reject(struct __sk_buff *skb, struct flow *f)
{
	if (!f->has_ports)
		return -1;
	if (f->proto == IPPROTO_TCP)
		return f->family == 4 ? reject_tcp4(skb) : reject_tcp6(skb);
	if (f->proto == IPPROTO_UDP)
		return f->family == 4 ? reject_udp4(skb) : reject_udp6(skb);
	return -1;
}

// An egress policy denial: passed in audit mode, else dropped, or with --deny-response reject
// answered and sent back.
static __always_inline int deny(struct __sk_buff *skb, struct ep_cfg *ep, struct flow *f, __u8 reason)
{
	if (ep->flags & EP_AUDIT)
		return audit(skb, ep, f, reason, DIR_EGRESS);
	__u32 zero = 0;
	struct proxy_cfg *p = bpf_map_lookup_elem(&fqdnd_proxy, &zero);
	if (p && (p->flags & PROXY_REJECT) && make_reject(skb, f) == 0) {
		report(skb, ep, f, reason, DIR_EGRESS, VF_REJECTED);
		skb->mark = REJECT_MARK;
		return bpf_redirect(skb->ifindex, 0);
	}
	return drop(skb, ep, f, reason);
}

// Hand the packet to the proxy's socket. TCP: the connection's own (accepted) socket if there is
// one, else the proxy listener. Returns 0 when assigned.
static __always_inline int assign_to_proxy(struct __sk_buff *skb, struct flow *f)
{
	__u32 zero = 0;
	struct proxy_cfg *p = bpf_map_lookup_elem(&fqdnd_proxy, &zero);
	if (!p)
		return -1;
	struct bpf_sock_tuple t = {};
	__u32 tsize;
	if (f->family == 4) {
		if (!(p->flags & PROXY_HAS_V4))
			return -1;
		__builtin_memcpy(&t.ipv4.saddr, f->saddr, 4);
		__builtin_memcpy(&t.ipv4.daddr, f->daddr, 4);
		t.ipv4.sport = bpf_htons(f->sport);
		t.ipv4.dport = bpf_htons(f->dport);
		tsize = sizeof(t.ipv4);
	} else {
		if (!(p->flags & PROXY_HAS_V6))
			return -1;
		__builtin_memcpy(t.ipv6.saddr, f->saddr, 16);
		__builtin_memcpy(t.ipv6.daddr, f->daddr, 16);
		t.ipv6.sport = bpf_htons(f->sport);
		t.ipv6.dport = bpf_htons(f->dport);
		tsize = sizeof(t.ipv6);
	}

	struct bpf_sock *sk = 0;
	if (f->proto == IPPROTO_TCP) {
		sk = bpf_skc_lookup_tcp(skb, &t, tsize, BPF_F_CURRENT_NETNS, 0);
		// A listener found by the original tuple is not the proxy (it would be some node-local
		// server on the original port): only an accepted connection counts here.
		if (sk && sk->state == BPF_TCP_LISTEN) {
			bpf_sk_release(sk);
			sk = 0;
		}
	}
	if (!sk) {
		__u16 port = f->proto == IPPROTO_TCP ? p->tcp_port : p->udp_port;
		if (f->family == 4) {
			t.ipv4.daddr = p->addr4;
			t.ipv4.dport = bpf_htons(port);
		} else {
			__builtin_memcpy(t.ipv6.daddr, p->addr6, 16);
			t.ipv6.dport = bpf_htons(port);
		}
		if (f->proto == IPPROTO_TCP)
			sk = bpf_skc_lookup_tcp(skb, &t, tsize, BPF_F_CURRENT_NETNS, 0);
		else
			sk = bpf_sk_lookup_udp(skb, &t, tsize, BPF_F_CURRENT_NETNS, 0);
	}
	if (!sk)
		return -1;
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return -1;
	skb->mark = p->mark;
	return 0;
}

SEC("classifier")
int fqdnd_from_pod(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct ep_cfg *ep = bpf_map_lookup_elem(&fqdnd_endpoints, &ifindex);
	if (!ep)
		return TC_ACT_UNSPEC;

	struct flow f = {};
	int parsed = parse(skb, &f);
	if (parsed == 0)
		return TC_ACT_UNSPEC;
	count(C_SEEN);
	if (parsed < 0) {
		if (ep->flags & EP_DEFAULT_DENY)
			return drop(skb, ep, &f, REASON_POLICY_DENIED);
		return TC_ACT_UNSPEC;
	}

	__u32 endpoint = ep->endpoint;
	__u32 flags = ep->flags;
	struct rule_val *v;

	// A pod may only speak for itself: a second address on its interface, a raw socket or
	// another pod's (or kube-dns's) address would make its packets someone else's, to the
	// policy here and to the DNS proxy, which knows a query's endpoint by its source.
	if ((flags & EP_CHECK_SOURCE) && !lookup_one(&fqdnd_src4, &fqdnd_src6, endpoint, &f, f.saddr, 0, 0))
		return drop(skb, ep, &f, REASON_SPOOFED);

	if (flags & EP_HAS_DENY) {
		v = lookup_rules(&fqdnd_deny4, &fqdnd_deny6, endpoint, &f, f.daddr);
		if (v) {
			stamp(v);
			return deny(skb, ep, &f, REASON_POLICY_DENY);
		}
	}

	if ((flags & EP_REDIRECT_DNS) && f.has_ports) {
		v = lookup_one(&fqdnd_redir4, &fqdnd_redir6, endpoint, &f, f.daddr, f.proto, f.dport);
		if (v) {
			if (assign_to_proxy(skb, &f) < 0)
				return drop(skb, ep, &f, REASON_PROXY_UNAVAILABLE);
			stamp(v);
			count(C_REDIRECTED);
			// The proxy answers from the server's address: remember the flow so that the answer
			// going to the pod is not mistaken for a new inbound connection (UDP), and passes
			// ingress policy (UDP and TCP).
			if (f.proto == IPPROTO_UDP || (flags & EP_INGRESS))
				ct_outbound(&f, ifindex);
			return TC_ACT_OK;
		}
	}

	if (!(flags & EP_DEFAULT_DENY)) {
		if (flags & EP_INGRESS)
			ct_outbound(&f, ifindex);
		return TC_ACT_UNSPEC;
	}

	v = lookup_rules(&fqdnd_allow4, &fqdnd_allow6, endpoint, &f, f.daddr);
	if (v) {
		stamp(v);
		count(C_ALLOWED);
		if (f.proto == IPPROTO_UDP || (flags & EP_INGRESS))
			ct_outbound(&f, ifindex);
		return TC_ACT_UNSPEC;
	}

	// A reply to a connection opened towards the pod: egress policy governs what the pod opens.
	struct ct_key k = {};
	ct_key_from(&k, &f, ifindex, 0);
	struct ct_val *c = bpf_map_lookup_elem(&fqdnd_ct, &k);
	__u64 now = bpf_ktime_get_ns();
	if (c && (c->flags & CT_INBOUND) && now - c->last_seen < CT_LIFETIME_NS) {
		if (now - c->last_seen > STAMP_GRANULARITY_NS)
			c->last_seen = now;
		count(C_CT_REPLY);
		return TC_ACT_UNSPEC;
	}
	return deny(skb, ep, &f, REASON_POLICY_DENIED);
}

// ICMP errors about a flow (unreachable, time exceeded, parameter problem, packet too big) come
// from routers on the way, not from the peer: they pass ingress policy like Cilium's "related"
// traffic, without matching the embedded header against conntrack.
static __always_inline int icmp_error(struct flow *f)
{
	if (f->proto == IPPROTO_ICMP)
		return f->icmp_type == 3 || f->icmp_type == 11 || f->icmp_type == 12;
	if (f->proto == IPPROTO_ICMPV6)
		return f->icmp_type >= 1 && f->icmp_type <= 4;
	return 0;
}

SEC("classifier")
int fqdnd_to_pod(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct ep_cfg *ep = bpf_map_lookup_elem(&fqdnd_endpoints, &ifindex);
	if (!ep || !(ep->flags & (EP_DEFAULT_DENY | EP_INGRESS)) || skb->mark == REJECT_MARK)
		return TC_ACT_UNSPEC;
	__u32 flags = ep->flags;

	struct flow f = {};
	int parsed = parse(skb, &f);
	if (parsed == 0)
		return TC_ACT_UNSPEC;
	if (parsed < 0) {
		if (flags & EP_INGRESS_DEFAULT_DENY)
			return drop_dir(skb, ep, &f, REASON_POLICY_DENIED, DIR_INGRESS);
		return TC_ACT_UNSPEC;
	}

	// What the pod opened, or an inbound connection already let in.
	struct ct_key k = {};
	ct_key_from(&k, &f, ifindex, 1);
	struct ct_val *c = bpf_map_lookup_elem(&fqdnd_ct, &k);
	__u64 now = bpf_ktime_get_ns();
	if (c && now - c->last_seen < CT_LIFETIME_NS) {
		if (now - c->last_seen > STAMP_GRANULARITY_NS)
			c->last_seen = now;
		if ((c->flags & CT_OUTBOUND) && (flags & EP_INGRESS))
			count(C_INGRESS_CT_REPLY);
		return TC_ACT_UNSPEC;
	}

	if (flags & EP_INGRESS) {
		if (icmp_error(&f))
			return TC_ACT_UNSPEC;
		struct rule_val *v;
		if (flags & EP_HAS_INGRESS_DENY) {
			v = lookup_rules(&fqdnd_ingress_deny4, &fqdnd_ingress_deny6, ep->endpoint, &f, f.saddr);
			if (v) {
				stamp(v);
				return deny_in(skb, ep, &f, REASON_POLICY_DENY);
			}
		}
		if (flags & EP_INGRESS_DEFAULT_DENY) {
			v = lookup_rules(&fqdnd_ingress4, &fqdnd_ingress6, ep->endpoint, &f, f.saddr);
			if (!v)
				return deny_in(skb, ep, &f, REASON_POLICY_DENIED);
			stamp(v);
		}
	}

	// Only connection openings are recorded: a TCP SYN, or a datagram that is not an answer to
	// a flow the pod started (those carry CT_OUTBOUND under the same key, found above).
	if (!f.has_ports || (f.proto == IPPROTO_TCP && (f.tcp_flags & 0x12) != 0x02))
		return TC_ACT_UNSPEC;
	struct ct_val cv = {.last_seen = now, .flags = CT_INBOUND};
	bpf_map_update_elem(&fqdnd_ct, &k, &cv, BPF_ANY);
	count(C_CT_CREATED);
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
