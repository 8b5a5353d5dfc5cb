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
// Ingress is policed at all: what the pod opens must be tracked so its replies come back in.
#define EP_INGRESS (EP_INGRESS_DEFAULT_DENY | EP_HAS_INGRESS_DENY)

#define REASON_POLICY_DENIED 1
#define REASON_POLICY_DENY 2
#define REASON_PROXY_UNAVAILABLE 3
#define REASON_SPOOFED 4

#define CT_INBOUND 1
#define CT_OUTBOUND 2

#define DIR_EGRESS 0
#define DIR_INGRESS 1

#define PROXY_HAS_V4 1
#define PROXY_HAS_V6 2

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
	__u8 pad[7];
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

static __always_inline int drop_dir(struct __sk_buff *skb, struct ep_cfg *ep, struct flow *f, __u8 reason,
				    __u8 direction)
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
		__builtin_memset(e->pad, 0, sizeof(e->pad));
		bpf_ringbuf_submit(e, 0);
	} else {
		count(C_EVENTS_LOST);
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
			return drop(skb, ep, &f, REASON_POLICY_DENY);
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
	return drop(skb, ep, &f, REASON_POLICY_DENIED);
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
	if (!ep || !(ep->flags & (EP_DEFAULT_DENY | EP_INGRESS)))
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
				return drop_dir(skb, ep, &f, REASON_POLICY_DENY, DIR_INGRESS);
			}
		}
		if (flags & EP_INGRESS_DEFAULT_DENY) {
			v = lookup_rules(&fqdnd_ingress4, &fqdnd_ingress6, ep->endpoint, &f, f.saddr);
			if (!v)
				return drop_dir(skb, ep, &f, REASON_POLICY_DENIED, DIR_INGRESS);
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
