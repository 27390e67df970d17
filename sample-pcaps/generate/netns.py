"""Network namespaces, processes and in-namespace HTTP for the swarm generator.

Everything here touches only what this run created: namespaces named with the
run's prefix, the processes it started (killed by PID / own process group), and
/etc/netns/<ns>/ directories it wrote.  No host namespace has a default route,
so nothing can leave the swarm.
"""
import ctypes
import http.client
import json
import os
import signal
import socket
import subprocess
import time

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

# SWARMTAP_GEN_NETNS: another prefix, for two generator runs side by side.
PREFIX = os.environ.get("SWARMTAP_GEN_NETNS", "swt-")
BR_NS = PREFIX + "br"


def sh(*args, check=True, ns=None, quiet=False):
    cmd = list(args)
    if ns:
        cmd = ["ip", "netns", "exec", ns] + cmd
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and r.returncode != 0:
        raise RuntimeError("command failed (%d): %s\n%s" % (r.returncode, " ".join(cmd), r.stderr))
    return r.stdout


class InNetns:
    """Context manager: the calling thread enters namespace `ns` (sockets
    created inside stay in it)."""

    def __init__(self, ns):
        self.ns = ns

    def __enter__(self):
        self.orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open("/run/netns/%s" % self.ns, os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns %s" % self.ns)
        finally:
            os.close(fd)

    def __exit__(self, *exc):
        _libc.setns(self.orig, CLONE_NEWNET)
        os.close(self.orig)


def http_request(ns, method, host, port, path, body=None, headers=None, timeout=5):
    """HTTP request made from inside namespace `ns`. Returns (status, headers, bytes)."""
    with InNetns(ns):
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.connect()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, dict(r.getheaders()), data
    finally:
        conn.close()


def http_json(ns, method, host, port, path, obj=None, headers=None, timeout=5):
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    body = json.dumps(obj).encode() if obj is not None else None
    st, hd, data = http_request(ns, method, host, port, path, body, h, timeout)
    return st, hd, data


class Procs:
    """Processes this run started. Each gets its own process group, so stopping
    it (by its PID) also stops what it forked, and nothing else."""

    def __init__(self):
        self.procs = []  # (name, Popen)

    def start(self, name, argv, ns=None, log=None, env=None, cwd=None, stdin=subprocess.DEVNULL):
        if ns:
            argv = ["ip", "netns", "exec", ns] + list(argv)
        out = open(log, "ab") if log else subprocess.DEVNULL
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=stdin,
                             start_new_session=True, env=env, cwd=cwd)
        self.procs.append((name, p))
        return p

    def stop(self, p, sig=signal.SIGTERM, timeout=8):
        if p.poll() is not None:
            return p.returncode
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return p.returncode
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return p.wait(5)

    def stop_all(self):
        for name, p in reversed(self.procs):
            self.stop(p, timeout=5)
        self.procs = []


class Net:
    """A bridge in its own namespace and one namespace per host, joined by veth pairs."""

    def __init__(self, ipv4=True, ipv6=False):
        self.hosts = {}  # name -> ns
        self.ipv4 = ipv4
        self.ipv6 = ipv6
        self.created = []
        self.etc_dirs = []
        self.made_etc_netns = not os.path.isdir("/etc/netns")

    def setup_bridge(self):
        self._add_ns(BR_NS)
        sh("ip", "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0", ns=BR_NS)
        # The bridge has no address: it only forwards. No IPv6 chatter from it.
        sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", ns=BR_NS)
        sh("sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1", ns=BR_NS)
        sh("ip", "link", "set", "br0", "up", ns=BR_NS)
        sh("ip", "link", "set", "lo", "up", ns=BR_NS)

    def _add_ns(self, ns):
        if os.path.exists("/run/netns/%s" % ns):
            raise RuntimeError("namespace %s already exists (another run in progress, or a "
                               "leftover: remove it with `ip netns del %s`)" % (ns, ns))
        sh("ip", "netns", "add", ns)
        self.created.append(ns)

    def add_host(self, name, ipv4s, ipv6s=(), hosts_file=None, rate_kbit=None):
        ns = PREFIX + name
        self._add_ns(ns)
        if hosts_file is not None:
            d = "/etc/netns/%s" % ns
            os.makedirs(d, exist_ok=True)
            self.etc_dirs.append(d)
            with open(d + "/hosts", "w") as f:
                f.write("127.0.0.1 localhost\n::1 localhost\n" + hosts_file)
            # Names not in the hosts file are looked up on the loopback only.
            with open(d + "/resolv.conf", "w") as f:
                f.write("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        veth = "v-" + name[:10]
        sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", veth, "netns", BR_NS)
        sh("ip", "link", "set", veth, "master", "br0", ns=BR_NS)
        if not ipv6s:
            sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", ns=ns)
            sh("sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1", ns=ns)
            sh("sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1", ns=ns)
        else:
            for k in ("all", "default", "eth0"):
                sh("sysctl", "-qw", "net.ipv6.conf.%s.accept_dad=0" % k, ns=ns)
                sh("sysctl", "-qw", "net.ipv6.conf.%s.accept_ra=0" % k, ns=ns)
                sh("sysctl", "-qw", "net.ipv6.conf.%s.router_solicitations=0" % k, ns=ns)
        for dev, n in ((veth, BR_NS), ("eth0", ns)):
            sh("ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off", ns=n, quiet=True)
        sh("ip", "link", "set", "lo", "up", ns=ns)
        for a in ipv4s:
            sh("ip", "addr", "add", a + "/24", "dev", "eth0", ns=ns)
        for a in ipv6s:
            sh("ip", "-6", "addr", "add", a + "/64", "dev", "eth0", "nodad", ns=ns)
        sh("ip", "link", "set", "eth0", "up", ns=ns)
        sh("ip", "link", "set", veth, "up", ns=BR_NS)
        if rate_kbit:
            # htb on the host's egress: a rate limit enforced by the kernel.
            sh("tc", "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "htb", "default", "10", ns=ns)
            sh("tc", "class", "add", "dev", "eth0", "parent", "1:", "classid", "1:10", "htb",
               "rate", "%dkbit" % rate_kbit, "ceil", "%dkbit" % rate_kbit, "burst", "4k", ns=ns)
        self.hosts[name] = ns
        return ns

    def assert_no_route_out(self):
        for name, ns in self.hosts.items():
            for fam in ("-4", "-6"):
                out = sh("ip", fam, "route", "show", "default", ns=ns, check=False)
                if out.strip():
                    raise RuntimeError("namespace %s has a default route: %s" % (ns, out))

    def teardown(self):
        for ns in reversed(self.created):
            # Any process still inside would keep the namespace alive: those
            # are ours (all our processes run inside our namespaces).
            sh("ip", "netns", "del", ns, check=False)
        self.created = []
        for d in self.etc_dirs:
            for f in ("hosts", "resolv.conf"):
                try:
                    os.unlink(os.path.join(d, f))
                except FileNotFoundError:
                    pass
            try:
                os.rmdir(d)
            except OSError:
                pass
        self.etc_dirs = []
        if self.made_etc_netns:
            try:
                os.rmdir("/etc/netns")  # only if this run created it and it is empty
            except OSError:
                pass


def wait_port(ns, ip, port, timeout=20, udp=False):
    """Wait until something listens on ip:port inside ns (checked with ss, no packets sent)."""
    t_end = time.time() + timeout
    flag = "-uln" if udp else "-tln"
    while time.time() < t_end:
        out = sh("ss", "-H", flag, ns=ns, check=False)
        for line in out.splitlines():
            cols = line.split()
            if len(cols) >= 4 and cols[3].endswith(":%d" % port):
                return True
        time.sleep(0.2)
    return False
