//! Figures for the eBPF datapath, measured in private network namespaces (root only):
//! time to attach an endpoint, `apply` latency (the proxy's ack), and packets/s through the pod's
//! veth with and without the tc programs, in the same run.
//!
//! cargo run --release -p ebpf-redirect --example datapath_figures [-- <packets>]
//!
//! Reports; never asserts. Uses the test harness's namespaces (fqdnd_testkit::netns).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

use ebpf_redirect::{AyaConfig, AyaDatapath, Datapath, DesiredEndpoint, PolicyRoute, ProxyTarget};
use fqdn_cache::{AllowKey, Delta, EndpointId, L4Proto, PortProto};
use fqdnd_testkit::netns::{Bpffs, POD_IP4, POD_VETH, Topology, WORLD_IP4};
use policy_sync::resolved::EndpointPolicy;

const EP: EndpointId = EndpointId(1);

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("datapath_figures needs root (network namespaces, eBPF)");
        std::process::exit(2);
    }
    let packets: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(300_000);
    let topo = Topology::new();
    let bpffs = Bpffs::new();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let sink = SocketAddr::new(IpAddr::V4(WORLD_IP4), 9000);

    let baseline = flood(&topo, sink, packets);

    let config = AyaConfig {
        bpffs_dir: bpffs.datapath_dir(),
        route: PolicyRoute::default(),
        ..AyaConfig::new(ProxyTarget { ipv4: None, ipv6: None, udp_port: 0, tcp_port: 0 })
    };
    let t = Instant::now();
    let dp = topo.node.run(|| AyaDatapath::open(config)).expect("open");
    let open_time = t.elapsed();

    let policy = EndpointPolicy { egress_default_deny: true, ..Default::default() };
    let sync = |policy: &EndpointPolicy| {
        let desired = [DesiredEndpoint::new(EP, Some(POD_VETH.into()), policy)];
        topo.node.run(|| dp.sync_endpoints(&desired)).expect("sync");
    };
    let t = Instant::now();
    sync(&policy);
    let attach_time = t.elapsed();

    // Detach/attach cycles for a steadier attach figure.
    let mut attach_times = Vec::new();
    for _ in 0..20 {
        topo.node.run(|| dp.sync_endpoints(&[])).expect("detach");
        let t = Instant::now();
        sync(&policy);
        attach_times.push(t.elapsed());
    }

    // A realistic map: 20k learned entries of other endpoints and this one.
    let filler: Vec<AllowKey> = (0..20_000u32)
        .map(|i| AllowKey {
            endpoint: EndpointId(1 + i % 50),
            ip: IpAddr::V4(std::net::Ipv4Addr::from(0x0a64_0000 + i)),
            port: PortProto { port: 443, proto: L4Proto::Tcp },
        })
        .collect();
    let t = Instant::now();
    rt.block_on(dp.apply(Delta { add: filler, remove: vec![], ..Delta::default() })).expect("fill");
    let fill_time = t.elapsed();

    // apply latency: one learned IP per delta (the common DNS answer), added then removed.
    let mut single = Vec::new();
    for i in 0..5_000u32 {
        let key = AllowKey {
            endpoint: EP,
            ip: IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i)),
            port: PortProto { port: 443, proto: L4Proto::Any },
        };
        let t = Instant::now();
        rt.block_on(dp.apply(Delta { add: vec![key], remove: vec![], ..Delta::default() })).expect("apply");
        single.push(t.elapsed());
    }
    // Eight addresses per answer, as large A sets come.
    let mut batch = Vec::new();
    for i in 0..1_000u32 {
        let add = (0..8)
            .map(|j| AllowKey {
                endpoint: EP,
                ip: IpAddr::V4(std::net::Ipv4Addr::from(0x0c00_0000 + i * 8 + j)),
                port: PortProto::ANY,
            })
            .collect();
        let t = Instant::now();
        rt.block_on(dp.apply(Delta { add, remove: vec![], ..Delta::default() })).expect("apply");
        batch.push(t.elapsed());
    }

    // Throughput through the programs: the flood's destination allowed (full lookup path).
    rt.block_on(dp.apply(Delta {
        add: vec![AllowKey { endpoint: EP, ip: sink.ip(), port: PortProto { port: 9000, proto: L4Proto::Udp } }],
        ..Delta::default()
    }))
    .expect("allow sink");
    let with_deny = flood(&topo, sink, packets);
    // What the agent attaches for a stage-4 pod: both directions default deny, anti-spoofing on
    // (a source-trie lookup and a conntrack lookup per packet more).
    let both = EndpointPolicy { egress_default_deny: true, ingress_default_deny: true, ..Default::default() };
    let desired = [DesiredEndpoint::new(EP, Some(POD_VETH.into()), &both).owning(&[IpAddr::V4(POD_IP4)])];
    topo.node.run(|| dp.sync_endpoints(&desired)).expect("sync");
    let with_both = flood(&topo, sink, packets);
    // Attached, endpoint without policy: the programs' cheapest path.
    sync(&EndpointPolicy::default());
    let pass_through = flood(&topo, sink, packets);
    let counters = dp.counters().expect("counters");
    let last_used = dp.last_used().expect("last used").len();

    println!("datapath figures ({} CPUs, {packets} UDP packets of 64 bytes per flood)", num_cpus());
    println!("open (load + verify 2 programs, create/pin 17 maps): {open_time:?}");
    println!("first attach (policy + 2 TCX links + pins):           {attach_time:?}");
    println!(
        "re-attach p50 / max over 20:                          {:?} / {:?}",
        pct(&mut attach_times, 50),
        pct(&mut attach_times, 100)
    );
    println!("fill 20k learned entries in one apply:                {fill_time:?}");
    println!(
        "apply, 1 IP (2 entries, TCP+UDP): p50 {:?}  p99 {:?}  max {:?}",
        pct(&mut single, 50),
        pct(&mut single, 99),
        pct(&mut single, 100)
    );
    println!(
        "apply, 8 IPs:                     p50 {:?}  p99 {:?}  max {:?}",
        pct(&mut batch, 50),
        pct(&mut batch, 99),
        pct(&mut batch, 100)
    );
    for (name, f) in [
        ("no program", baseline),
        ("default deny, allowed", with_deny),
        ("+ingress deny, source check", with_both),
        ("attached, no policy", pass_through),
    ] {
        println!(
            "flood {name:<28} sent {:>8.0} pkt/s  received {:>8.0} pkt/s  ({} of {} received)",
            f.sent_pps, f.received_pps, f.received, packets
        );
    }
    println!("counters: {counters:?}; learned IPs with a last-used stamp: {last_used}");
    topo.node.run(|| dp.uninstall()).expect("uninstall");
}

struct Flood {
    sent_pps: f64,
    received_pps: f64,
    received: usize,
}

/// Send `count` datagrams from the pod to `sink` in the world with sendmmsg, and count what
/// arrives. Bounded: stops after `count` or when nothing arrives for 300 ms.
fn flood(topo: &Topology, sink: SocketAddr, count: usize) -> Flood {
    let rx = topo.world.run(|| UdpSocket::bind(sink)).expect("sink");
    set_rcvbuf(&rx, 64 << 20);
    rx.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let tx = topo.pod.run(|| UdpSocket::bind(SocketAddr::new(IpAddr::V4(POD_IP4), 0))).expect("source");
    tx.connect(sink).unwrap();

    let receiver = std::thread::spawn(move || {
        let mut got = 0usize;
        let mut first = None;
        let mut last = Instant::now();
        let mut buf = [0u8; 2048];
        while got < count {
            match rx.recv(&mut buf) {
                Ok(_) => {
                    got += 1;
                    last = Instant::now();
                    first.get_or_insert(last);
                }
                Err(_) => break,
            }
        }
        let span = first.map(|f| last - f).unwrap_or_default();
        (got, span)
    });

    let payload = [0x5au8; 64];
    let batch = 64;
    let mut iovs: Vec<libc::iovec> =
        (0..batch).map(|_| libc::iovec { iov_base: payload.as_ptr() as *mut _, iov_len: payload.len() }).collect();
    // SAFETY: mmsghdr is plain data; each entry points at one iovec that outlives the calls.
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let start = Instant::now();
    let mut sent = 0usize;
    while sent < count {
        let n = batch.min(count - sent);
        // SAFETY: msgs holds n valid headers for a connected socket.
        let r = unsafe { libc::sendmmsg(tx.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
        if r > 0 {
            sent += r as usize;
        } else {
            std::thread::yield_now();
        }
    }
    let send_time = start.elapsed();
    let (received, span) = receiver.join().expect("receiver");
    Flood {
        sent_pps: sent as f64 / send_time.as_secs_f64(),
        received_pps: if span.is_zero() { 0.0 } else { received as f64 / span.as_secs_f64() },
        received,
    }
}

fn set_rcvbuf(sock: &UdpSocket, bytes: libc::c_int) {
    // SAFETY: a live int option value. SO_RCVBUFFORCE: root may exceed rmem_max.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn pct(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    let idx = ((v.len() * p).div_ceil(100)).saturating_sub(1).min(v.len() - 1);
    v[idx]
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
