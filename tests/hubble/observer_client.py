"""A second Hubble client, in another language: Python grpcio with stubs generated at run time
by grpcio-tools from the project's proto/ files. Run by tests/hubble_python.rs against a real
agent that has answered three dig queries (www.microsoft.com A, www.google.com A refused,
login.microsoft.com AAAA); it calls ServerStatus, GetFlows (number, filters, follow with a flow
made after the call began) and GetNodes, checks the fields, and checks that every flow's protobuf
JSON (Google's json_format) equals what `fqdnd observe -o json` prints for it.

Over the Unix socket the channel sets `grpc.default_authority`: grpcio sends the percent-encoded
socket path as `:authority` for `unix:` targets, which the HTTP/2 layer under tonic (h2) rejects as
malformed (RST_STREAM PROTOCOL_ERROR); grpc-go clients send `localhost` and need nothing.

Exits non-zero on the first failed check; prints `checks: N` when all passed.
"""

import argparse
import json
import subprocess
import sys
import tempfile

checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1


def stubs(proto_dir, out_dir):
    from grpc_tools import protoc

    files = ["flow/flow.proto", "relay/relay.proto", "observer/observer.proto"]
    # grpc_tools carries the well-known types (google/protobuf/*.proto) with it.
    import grpc_tools

    wkt = grpc_tools.__path__[0] + "/_proto"
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"-I{wkt}", f"--python_out={out_dir}",
                      f"--grpc_python_out={out_dir}"] + files)
    check(rc == 0, f"grpc_tools.protoc exited {rc}")
    sys.path.insert(0, out_dir)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True, help="gRPC target: unix:PATH or HOST:PORT")
    ap.add_argument("--address", required=True, help="the address GetNodes should report")
    ap.add_argument("--authority", help="grpc.default_authority for the channel")
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--fqdnd", required=True)
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--dns", required=True, help="the agent's DNS address, IP:PORT")
    ap.add_argument("--node", required=True)
    args = ap.parse_args()

    out = tempfile.mkdtemp(prefix="fqdnd-pystubs-")
    stubs(args.proto_dir, out)
    import grpc
    from google.protobuf import json_format
    from flow import flow_pb2
    from observer import observer_pb2, observer_pb2_grpc
    from relay import relay_pb2

    options = [("grpc.default_authority", args.authority)] if args.authority else []
    channel = grpc.insecure_channel(args.target, options=options)
    obs = observer_pb2_grpc.ObserverStub(channel)

    # ServerStatus.
    st = obs.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=30)
    check(st.num_flows == 6 and st.seen_flows == 6, f"num/seen flows: {st}")
    check(st.max_flows == 4096, f"max_flows: {st}")
    check(st.uptime_ns > 0, f"uptime: {st}")
    check(st.HasField("num_connected_nodes") and st.num_connected_nodes.value == 1, f"connected nodes: {st}")
    check(st.version.endswith("+fqdnd"), f"version: {st.version}")

    def get(**kw):
        return list(obs.GetFlows(observer_pb2.GetFlowsRequest(**kw), timeout=30))

    # GetFlows, number.
    all_ = get(number=100)
    check(len(all_) == 6, f"{len(all_)} flows")
    queries = [(r.flow.l7.dns.query, flow_pb2.L7FlowType.Name(r.flow.l7.type)) for r in all_]
    check(queries == [
        ("www.microsoft.com.", "REQUEST"), ("www.microsoft.com.", "RESPONSE"),
        ("www.google.com.", "REQUEST"), ("www.google.com.", "RESPONSE"),
        ("login.microsoft.com.", "REQUEST"), ("login.microsoft.com.", "RESPONSE"),
    ], f"flows: {queries}")
    for r in all_:
        check(r.WhichOneof("response_types") == "flow", f"a flow: {r}")
        check(r.node_name == args.node and r.flow.node_name == args.node, f"node: {r.node_name}")
        check(r.time == r.flow.time, "response time is the flow's")
        check(r.flow.Type == flow_pb2.L7, f"Type: {r.flow.Type}")
        check(r.flow.event_type.type == 129, f"event type: {r.flow.event_type}")
        check(r.flow.traffic_direction == flow_pb2.EGRESS, "egress")
        check(r.flow.l4.WhichOneof("protocol") == "UDP", "UDP")
    req, ans = all_[0].flow, all_[1].flow
    check(req.verdict == flow_pb2.FORWARDED and req.HasField("is_reply") and not req.is_reply.value, f"{req}")
    check((req.source.namespace, req.source.pod_name) == ("default", "alpine"), f"source {req.source}")
    check("k8s:app=alpine" in req.source.labels, f"labels {req.source.labels}")
    check((req.destination.namespace, req.destination.pod_name) == ("kube-system", "kube-dns"), f"{req.destination}")
    check((req.IP.source, req.IP.destination, req.IP.ipVersion) == ("127.0.0.1", "127.0.0.2", flow_pb2.IPv4), f"{req.IP}")
    check(list(req.l7.dns.qtypes) == ["A"], f"qtypes {req.l7.dns.qtypes}")
    check(req.Summary == "DNS Query www.microsoft.com. A", req.Summary)
    check(ans.is_reply.value and list(ans.l7.dns.ips) == ["10.200.0.1"], f"{ans}")
    check(ans.l7.dns.ttl == 300 and ans.l7.dns.rcode == 0 and list(ans.l7.dns.rrtypes) == ["A"], f"{ans.l7.dns}")
    check(ans.l7.latency_ns > 0, "latency")
    check(all_[2].flow.verdict == flow_pb2.DROPPED and all_[3].flow.l7.dns.rcode == 3, "the refusal")
    check([r.flow.l7.dns.query for r in get(number=2)] == ["login.microsoft.com."] * 2, "number=2")
    first = get(number=1, first=True)
    check(len(first) == 1 and first[0].flow.l7.dns.query == "www.microsoft.com.", "first")

    # The same flows as fqdnd observe -o json prints them: protobuf JSON (Google's mapping) of the
    # messages this client received equals observe's lines, as JSON values.
    observe = subprocess.run([args.fqdnd, "observe", "-o", "json", "--last", "100", "--state-dir", args.state_dir],
                             capture_output=True, text=True, timeout=60)
    check(observe.returncode == 0, f"observe: {observe.stderr}")
    lines = [json.loads(l) for l in observe.stdout.splitlines() if l.strip()]
    check(len(lines) == 6, f"observe printed {len(lines)} lines")
    for r, line in zip(all_, lines):
        pb = json_format.MessageToDict(r, preserving_proto_field_name=True)
        check(pb == line, f"protobuf JSON differs from observe -o json:\n{json.dumps(pb, sort_keys=True)}\n"
                          f"{json.dumps(line, sort_keys=True)}")

    # Filters.
    F = flow_pb2.FlowFilter
    dropped = get(number=100, whitelist=[F(verdict=[flow_pb2.DROPPED])])
    check([r.flow.l7.dns.query for r in dropped] == ["www.google.com."] * 2, "verdict filter")
    login = get(number=100, whitelist=[F(dns_query=["^login"])])
    check(len(login) == 2, "dns_query filter")
    from_alpine = get(number=100, whitelist=[F(source_pod=["default/alpine"])])
    check([r.flow.is_reply.value for r in from_alpine] == [False] * 3, "source_pod filter")
    not_replies = get(number=100, blacklist=[F(reply=[True])])
    check(len(not_replies) == 3, "blacklist")
    either = get(number=100, whitelist=[F(destination_ip=["127.0.0.1"]), F(protocol=["tcp"])])
    check(len(either) == 3, "whitelist OR")
    try:
        get(number=1, whitelist=[F(source_ip=["nope"])])
        check(False, "a bad filter must fail")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and "source_ip" in e.details(), f"{e}")

    # Follow: number=1 gives the newest flow first (the subscription is in place), then a query
    # made now arrives.
    call = obs.GetFlows(observer_pb2.GetFlowsRequest(number=1, follow=True,
                                                     whitelist=[F(dns_query=["microsoft"])]), timeout=60)
    history = next(call)
    check(history.flow.l7.dns.query == "login.microsoft.com.", f"follow history {history.flow.l7.dns.query}")
    host, port = args.dns.rsplit(":", 1)
    dig = subprocess.run(["dig", f"@{host}", "-p", port, "+tries=1", "+time=5", "short.microsoft.com", "A"],
                         capture_output=True, text=True, timeout=30)
    check("10.200.0.5" in dig.stdout, f"dig: {dig.stdout}")
    live = [next(call), next(call)]
    call.cancel()
    check([r.flow.l7.dns.query for r in live] == ["short.microsoft.com."] * 2, "followed flows")
    check(list(live[1].flow.l7.dns.ips) == ["10.200.0.5"], "followed answer")

    # GetNodes.
    nodes = obs.GetNodes(observer_pb2.GetNodesRequest(), timeout=30).nodes
    check(len(nodes) == 1, f"nodes: {nodes}")
    n = nodes[0]
    check(n.name == args.node and n.state == relay_pb2.NODE_CONNECTED, f"{n}")
    check(n.address == args.address and not n.tls.enabled, f"{n}")
    check(n.seen_flows == 8 and n.num_flows == 8 and n.max_flows == 4096, f"{n}")

    print(f"checks: {checks}")


if __name__ == "__main__":
    main()
