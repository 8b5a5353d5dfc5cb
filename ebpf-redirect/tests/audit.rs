//! Audit mode in the kernel: an endpoint in audit mode loses nothing to its policy. What would
//! be dropped passes, both ways, and each such flow is reported once as audited (not as a drop);
//! its later packets and replies pass silently. Anti-spoofing still drops. Root only.

mod common;

use std::net::{IpAddr, SocketAddr};

use common::{CONNECT, DROPPED_CONNECT, EP, Fixture, no_proxy, pod_ip};
use ebpf_redirect::{DesiredEndpoint, Direction, DropReason};
use fqdnd_testkit::netns::{self, POD_VETH, TcpServer, WORLD_IP4};
use fqdnd_testkit::privileged;
use policy_sync::resolved::EndpointPolicy;

#[test]
fn audit_mode_reports_what_policy_would_drop_and_passes_it() {
    if !privileged::available("audit_mode_reports_what_policy_would_drop_and_passes_it") {
        return;
    }
    let fx = Fixture::new();
    let world = SocketAddr::new(IpAddr::V4(WORLD_IP4), 80);
    let pod = SocketAddr::new(pod_ip(false), 8080);
    let _out = TcpServer::start(&fx.topo.world, world, b"from the world");
    let _in = TcpServer::start(&fx.topo.pod, pod, b"from the pod");
    let dp = fx.open(no_proxy());
    let mut events = fx.events(&dp);
    let policy = EndpointPolicy { egress_default_deny: true, ingress_default_deny: true, ..Default::default() };
    let attach = |audit: bool| {
        let desired = [DesiredEndpoint::new(EP, Some(POD_VETH.into()), &policy).owning(&[pod.ip()]).audited(audit)];
        fx.topo.node.run(|| dp.sync_endpoints(&desired)).expect("sync");
    };
    attach(true);

    // Out: the connect works, reported once as audited.
    let (sport, res) = fx.connect(world, CONNECT);
    assert_eq!(res.expect("audit mode: egress passes"), b"from the world");
    let e = fx.drop_event(&mut events, sport, world);
    assert!(e.audit && !e.rejected, "{e:?}");
    assert_eq!((e.direction, e.reason), (Direction::Egress, DropReason::PolicyDenied));
    // In: the same.
    let (wport, res) = fx.topo.world.run(|| netns::tcp_exchange(IpAddr::V4(WORLD_IP4), pod, CONNECT));
    assert_eq!(res.expect("audit mode: ingress passes"), b"from the pod");
    let e = fx.drop_event_where(&mut events, "for the audited inbound connect", |e| e.src.port() == wport);
    assert!(e.audit, "{e:?}");
    assert_eq!(e.direction, Direction::Ingress);
    let c = dp.counters().unwrap();
    assert_eq!(c.audited, 2, "one report per flow, not per packet: {c:?}");
    assert_eq!((c.dropped_denied, c.ingress_dropped_denied), (0, 0), "audits are not drops: {c:?}");
    // Nothing else was reported for those two flows (their other packets passed silently).
    assert!(events.try_recv().is_none(), "one event per flow");

    // Spoofing is not policy: still dropped.
    fx.topo.pod.ip(&["addr", "add", "10.200.0.77/24", "dev", "eth0", "nodad"]);
    let spoofed: IpAddr = "10.200.0.77".parse().unwrap();
    let (_, res) = fx.topo.pod.run(|| netns::tcp_connect(spoofed, world, DROPPED_CONNECT));
    assert!(res.is_err());
    let e = fx.drop_event_where(&mut events, "for the spoofed connect", |e| e.src.ip() == spoofed);
    assert_eq!((e.reason, e.audit), (DropReason::SpoofedSource, false));

    // Out of audit mode: enforced again.
    attach(false);
    let (sport, res) = fx.connect(world, DROPPED_CONNECT);
    assert!(res.is_err(), "enforced once audit mode is off");
    assert!(!fx.drop_event(&mut events, sport, world).audit);
    fx.topo.node.run(|| dp.uninstall()).expect("uninstall");
}
