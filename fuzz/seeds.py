#!/usr/bin/env python3
"""Writes the hand-made seed corpus, fuzz/corpus/<target>/<name>: a few
meaningful inputs per target, from the unit tests' byte layouts and the
lab's recordings. Rerun after changing a seed here; the fuzzer's own finds
are not kept (only a crash, once fixed, is added by hand as a regression).

The record layout (observer-ebpf's `Record`, x86_64 little endian) is
checked by observer's fuzzing tests (RECORD_HEADER == 120)."""
import json
import os
import re
import struct

ROOT = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(ROOT)


def write(target, name, data):
    d = os.path.join(ROOT, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- packets (capture/decode.rs's builders) --------------------------------

IMDS4 = bytes([169, 254, 169, 254])
POD4 = bytes([198, 18, 2, 2])
HOST4 = bytes([10, 0, 3, 15])
IMDS6 = bytes.fromhex("fd000ec2000000000000000000000254")
POD6 = bytes.fromhex("fd001002440000000000000000000007")
FIN, SYN, RST, PSH, ACK = 1, 2, 4, 8, 16


def ipv4(src, dst, proto, ttl, payload):
    total = 20 + len(payload)
    h = struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, 0x1234, 0x4000, ttl, proto, 0, src, dst)
    return h + payload


def ipv6(src, dst, nh, hop, payload):
    return struct.pack(">IHBB16s16s", 0x60000000, len(payload), nh, hop, src, dst) + payload


def tcp(sport, dport, seq, ack, flags, payload=b"", options=b""):
    doff = (20 + len(options)) // 4
    return struct.pack(">HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, 64240, 0, 0) + options + payload


def icmp(ty, code, body):
    return bytes([ty, code, 0, 0, 0, 0, 0, 0]) + body


MSS = bytes([2, 4, 0x05, 0xB4])
PUT = b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n"
GET_CREDS = (
    b"GET /v2/credentials/4f6d2c1e-1111-2222-3333-444455556666?x=1 HTTP/1.1\r\n"
    b"Host: 169.254.170.2\r\nX-aws-ec2-metadata-token: AQAEsecret\r\n\r\n"
)
REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 56\r\n\r\nAQAEtoken-body-never-in-a-snapshot"

# ---- ring records (observer-ebpf/src/lib.rs `Record`) ----------------------

HOOK = dict(egress=1, ingress=2, tc_in=3, tc_out=4, connect=5, drop=6, veth=7, mkdir=8)
IP_FORWARD = 0xFFFFFFFF82057290 + 0x60


def record(hook, ts, pkt=b"", family=4, cookie=5, cgroup=11254, netns=77, pid=9247,
           comm=b"sdk-client", ifindex=2, reason=0, location=0, snap=None, folded=None):
    """Header (120 bytes) then the snapshot, as the decode_record target reads it.
    `folded`: (bits, host_ttl, host_req_ttl, host_req_flags, host_req_seq,
    host_status), the uplink's sightings the kernel folds into a reply."""
    snap = pkt if snap is None else snap
    bits, ttl, req_ttl, req_flags, req_seq, status = folded or (0, 0, 0, 0, 0, 0)
    h = struct.pack("<QQQQQQBBHIIIIIBBBBIH6x16s16s", ts, cgroup, cookie, pid << 32, netns,
                    location, HOOK[hook], family, 80, ifindex, reason, len(pkt), len(snap),
                    ifindex if bits else 0, bits, ttl, req_ttl, req_flags, req_seq, status,
                    comm.ljust(16, b"\0"), IMDS4.ljust(16, b"\0"))
    assert len(h) == 120
    return h + snap


def inbound(pkt, headers):
    """What the eBPF side keeps of a packet from an endpoint: headers + 16."""
    return pkt[: headers + 16]


MS = 1_000_000
syn = ipv4(POD4, IMDS4, 6, 64, tcp(59394, 80, 1000, 0, SYN, options=MSS))
synack = ipv4(IMDS4, POD4, 6, 63, tcp(80, 59394, 5000, 1001, SYN | ACK, options=MSS))
put = ipv4(POD4, IMDS4, 6, 64, tcp(59394, 80, 1001, 5001, PSH | ACK, PUT))
reply1 = ipv4(IMDS4, POD4, 6, 1, tcp(80, 59394, 5001, 1001 + len(PUT), PSH | ACK, REPLY))
time_exceeded = ipv4(HOST4, IMDS4, 1, 64, icmp(11, 0, reply1[:28]))

write("decode_record", "tcp_syn", b"\0" + record("connect", 0) + record("egress", MS, syn))
write("decode_record", "token_put_and_reply", b"\0" + record("connect", 0)
      + record("egress", MS, put) + record("tc_out", MS + 10, put, cookie=0, cgroup=0)
      + record("tc_in", 2 * MS, reply1, cookie=0, cgroup=0, snap=inbound(reply1, 40))
      + record("ingress", 2 * MS + 10, reply1, snap=inbound(reply1, 40)))
write("decode_record", "icmp_time_exceeded", b"\0" + record("tc_out", MS, time_exceeded, cookie=0, cgroup=0))
write("decode_record", "kfree_skb_drop", b"\0"
      + record("drop", MS, reply1, cookie=0, cgroup=0, reason=27, location=IP_FORWARD, snap=inbound(reply1, 40)))
write("decode_record", "kfree_skb_old_kernel", b"\2"
      + record("drop", MS, reply1, cookie=0, cgroup=0, location=IP_FORWARD, snap=inbound(reply1, 40)))
write("decode_record", "hop_limit_1", b"\0" + record("connect", 0)
      + record("egress", MS, syn) + record("tc_out", MS + 5, syn, cookie=0, cgroup=0)
      + record("tc_in", 2 * MS, synack, cookie=0, cgroup=0) + record("ingress", 2 * MS + 5, synack)
      + record("egress", 3 * MS, put) + record("tc_out", 3 * MS + 5, put, cookie=0, cgroup=0)
      + record("tc_in", 4 * MS, reply1, cookie=0, cgroup=0, snap=inbound(reply1, 40))
      + record("drop", 4 * MS + 5, reply1, cookie=0, cgroup=0, reason=27, location=IP_FORWARD,
               snap=inbound(reply1, 40))
      + record("tc_out", 4 * MS + 9, time_exceeded, cookie=0, cgroup=0))
# As deployed: the connect stands for the SYN, and the uplinks' sightings
# ride on the reply's record (delivered) and on a drop's.
delivered = ipv4(IMDS4, POD4, 6, 64, tcp(80, 59394, 5001, 1001 + len(PUT), PSH | ACK, REPLY))
write("decode_record", "folded_as_deployed", b"\0" + record("connect", 0, folded=(4, 0, 0, 0, 0, 0))
      + record("egress", MS, put) + record("ingress", 2 * MS, synack)
      + record("ingress", 3 * MS, delivered, snap=inbound(delivered, 40),
               folded=(3, 2, 63, PSH | ACK, 1001, 200))
      + record("drop", 4 * MS, reply1, cookie=0, cgroup=0, location=IP_FORWARD,
               snap=reply1[:40], folded=(1, 1, 0, 0, 0, 200)))
write("decode_record", "ecs_credentials_path", b"\0" + record("connect", 0)
      + record("egress", MS, ipv4(POD4, bytes([169, 254, 170, 2]), 6, 64,
                                  tcp(40000, 80, 7, 9, PSH | ACK, GET_CREDS))))
write("decode_record", "veth_fallback", b"\1" + record("connect", 0)
      + record("egress", MS, syn) + record("veth", MS + 5, syn, cgroup=0, ifindex=9))
write("decode_record", "cgroup_mkdir", b"\0"
      + record("mkdir", 0, cgroup=11254, snap=b"/imdslab9178/app\0"))
syn6 = ipv6(POD6, IMDS6, 6, 64, tcp(43210, 80, 1000, 0, SYN, options=MSS))
reply6 = ipv6(IMDS6, POD6, 6, 1, tcp(80, 43210, 5001, 1100, PSH | ACK, REPLY))
write("decode_record", "ipv6_syn_and_reply", b"\0" + record("connect", 0, family=6)
      + record("egress", MS, syn6, family=6)
      + record("tc_in", 2 * MS, reply6, family=6, cookie=0, cgroup=0, snap=inbound(reply6, 60))
      + record("tc_out", 2 * MS + 5, ipv6(POD6, IMDS6, 58, 64, icmp(3, 0, reply6[:48])),
               family=6, cookie=0, cgroup=0))

# ---- JSON lines (tests/recordings/hop-limit-1.jsonl) -----------------------

with open(os.path.join(REPO, "tests/recordings/hop-limit-1.jsonl"), "rb") as f:
    lines = f.read().splitlines(keepends=True)
write("json_line", "handshake_and_put", b"".join(lines[:8]))
write("json_line", "reply_dropped", b"".join(lines[8:16]))
write("json_line", "one_event", lines[0])
ev = json.loads(lines[0])
ev["node"] = "evil\u001b[2J\u0007node"
ev["container"] = {"id": "abc", "name": "app\r\n", "runtime": "docker", "image": "x:1",
                   "labels": {"k\u0000": "v\u009b"}, "pod": "p", "namespace": "ns",
                   "nomad": {"alloc": "a", "job": "j", "group": "g", "task": "t"}}
write("json_line", "control_characters", (json.dumps(ev) + "\n").encode())
write("json_line", "mixed_log_and_findings", b"".join([
    b"2026-11-30T12:54:34Z INFO starting\n",
    b'{"type":"finding","kind":"healthy"}\n',
    b'{"type":"request","ts":"yesterday","node":"n"}\n',
    b'{"type":"lost_events","ts":"2026-11-30T12:54:35Z","node":"n","count":3}\n',
    b'{"type":"suppressed","ts":"2026-11-30T12:54:35Z","node":"n","count":100,"cgroup_id":7}\n',
    b'{"type":"reply","ts":"2026-11-30T12:54:35Z","node":"n","proto":"sctp"}\r\n',
    b"\n   \n",
    lines[-1].rstrip(b"\n"),
]))

# ---- HTTP replies (identity/http.rs, docker.rs, nomad.rs) ------------------

INSPECT = json.dumps({"Id": "4f6d2c1e" * 8, "Name": "/api", "Config": {
    "Image": "api:1.42", "Labels": {"io.kubernetes.pod.name": "web-0"}}}).encode()
ALLOC = json.dumps({"ID": "5456bd7a-9fc0-c0dd-6131-cbee77f57577", "Namespace": "default",
                    "JobID": "web", "TaskGroup": "frontend", "Job": {"Name": "web"}}).encode()


def resp(status, headers, body):
    return f"HTTP/1.1 {status}\r\n".encode() + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


def chunked(body, size):
    out = b""
    for i in range(0, len(body), size):
        c = body[i:i + size]
        out += b"%x\r\n" % len(c) + c + b"\r\n"
    return out + b"0\r\n\r\n"


write("http_response", "content_length", resp("200 OK", [b"Content-Length: %d" % len(INSPECT)], INSPECT))
write("http_response", "chunked", resp("200 OK", [b"Transfer-Encoding: chunked"], chunked(INSPECT, 37)))
write("http_response", "chunked_trailer", resp("200 OK", [b"Transfer-Encoding: chunked"],
                                               b"2\r\n{}\r\n0\r\nX-Trailer: 1\r\n\r\n"))
write("http_response", "to_end_of_stream", resp("200 OK", [], ALLOC))
write("http_response", "nomad_alloc", resp("200 OK", [b"Content-Type: application/json",
                                                      b"Content-Length: %d" % len(ALLOC)], ALLOC))
write("http_response", "not_found", resp("404 Not Found", [b"Content-Length: 40"],
                                         b'{"message":"No such container: abc"}    '))
write("http_response", "server_error", resp("500 Internal Server Error", [b"Content-Length: 23"],
                                            b'{"message":"boom\\u001b"}'))
write("http_response", "forbidden", resp("403 Forbidden", [b"Content-Length: 17"], b"Permission denied"))
write("http_response", "oversize_declared", resp("200 OK", [b"Content-Length: 4194305"], b"{"))
write("http_response", "oversize_body", resp("200 OK", [], b"[" + b"1," * 1100 + b"1]"))
write("http_response", "cut_short", resp("200 OK", [b"Content-Length: 9"], b"{}"))
write("http_response", "head_only", b"HTTP/1.1 200 OK\r\nContent-Le")
write("http_response", "not_http", b"\x16\x03\x01\x02\x00garbage that is not http")
write("http_response", "status_line_packet", b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
write("http_response", "request_line_packet", GET_CREDS)

# ---- netlink (sys/netlink.rs's builders and its recorded replies) ----------

RTM_NEWLINK, RTM_NEWROUTE, RTM_NEWNSID, NLMSG_ERROR, NLMSG_DONE = 16, 24, 88, 2, 3


def align4(b):
    return b + b"\0" * (-len(b) % 4)


def attr(ty, value):
    return align4(struct.pack("<HH", 4 + len(value), ty) + value)


def message(ty, body):
    return align4(struct.pack("<IHHII", 16 + len(body), ty, 0, 1, 0) + body)


def newlink(ifindex, name, kind=None, nsid=None):
    body = struct.pack("<BBHiII", 0, 0, 1, ifindex, 0, 0)
    body += attr(3, name.encode() + b"\0")
    if kind:
        body += attr(18, attr(1, kind.encode()))
    if nsid is not None:
        body += attr(37, struct.pack("<i", nsid))
    return message(RTM_NEWLINK, body)


write("netlink", "link_dump", newlink(1, "lo") + newlink(7, "veth3a9f", "veth", 4)
      + newlink(8, "docker0", "bridge"))
write("netlink", "link_dump_done", message(NLMSG_DONE, b"\0" * 4))
write("netlink", "error_eperm", message(NLMSG_ERROR, struct.pack("<i", -1) + b"\0" * 16))
write("netlink", "nsid", message(RTM_NEWNSID, b"\0" * 4 + attr(1, struct.pack("<i", 3))))

src = open(os.path.join(REPO, "observer/src/sys/netlink.rs")).read()


def recorded(name):
    m = re.search(r"(?:const|let) " + name + r"[^=]*= concat!\((.*?)\);", src, re.S)
    return bytes.fromhex("".join(re.findall(r'"([0-9a-f]+)"', m.group(1))))


write("netlink", "veth_on_bridge", message(RTM_NEWLINK, recorded("VETH_ON_BRIDGE")))
for name in ["multipath_lookup", "multipath_entry", "unreachable4", "local4_entry",
             "unicast6_entry", "unreachable6", "local6_lookup"]:
    write("netlink", "route_" + name, recorded(name))
