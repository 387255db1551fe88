#!/usr/bin/env python3
"""drbridge capacity benchmark (driven by bench/run.sh; run that, not this).

All on 127.0.0.1. Three targets, each driven by the same SIPp pair at the same stepped call rates:

  drbridge pbx->teams  SIPp uac (UDP, PBX trunk) -> drbridge -> mutual TLS -> stunnel server
                       (Teams cert, client cert required) -> TCP -> SIPp uas (Teams proxy)
  drbridge teams->pbx  SIPp uac (TCP) -> stunnel client (Teams cert) -> mutual TLS -> drbridge
                       -> UDP -> SIPp uas (PBX trunk)
  kamailio (peer)      SIPp uac (UDP) -> Kamailio stateful proxy (tm, rr, t_relay) -> UDP -> SIPp uas

Per step: offered and completed cps, failed calls, call set-up time (INVITE -> 200) p50/p99,
CPU of every process in the path (utime+stime from /proc/PID/stat), drbridge RSS. A step is
clean when no call failed (either SIPp) and p99 <= 200 ms. Each target stops after its first
unclean step (+1 step to show the slope). Results: bench/results/capacity.{json,md,png}.
"""

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
HZ = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
FQDN = "sbc.lab.drbridge.test"
P99_LIMIT_MS = 200.0
PCAP = "/usr/share/sip-tester/g711a.pcap"
PCAP_PACKETS = 236  # RTP packets in PCAP (7.05 s of G.711 A-law)
# The media stage's default player: SIPp's rtp_stream, which plays a raw A-law file from a few
# threads (-rtp_threadtasks calls each). pcap play starts a thread per call and sends late from
# ~500 concurrent calls on 2 cores (84-102 % CPU for SIPp at 1,000-2,000 calls, 2026-11-24);
# rtp_stream did 2,000 calls at 26 %.
TONE_SECS = 7
TONE_PACKETS = TONE_SECS * 50  # 160-byte packets (20 ms) of 8 kHz A-law
# Sockets that do not size their own receive buffer (SIPp's media and echo sockets) get this
# during the media stage: at 2,000 calls the echo UAS takes 100,000 packets/s on one socket, and
# the default 208 KB overflowed (3.4 % of the packets dropped in SIPp, none in drbridge).
MEDIA_RMEM_DEFAULT = 4 * 1024 * 1024
STREAM_PAUSE_MS = 10000


def media_hold_s(player):
    """Seconds a media call lasts: pcap 7.05 s inside an 8 s pause, or the 7 s tone inside a 10 s
    pause, plus set-up."""
    return 8.2 if player == "pcap" else STREAM_PAUSE_MS / 1000 + 0.2
SEED_PBX_BHCC = [
    ("MiVoice Office 400", 4200),
    ("MiVoice Business", 12000),
    ("MiVoice 5000", 16000),
    ("MX-ONE", 24000),
]

# ------------------------------------------------------------------------------------------
# processes: every one in its own session (process group), all stopped at exit
# ------------------------------------------------------------------------------------------

STARTED = []  # Popen objects


def log(*a):
    print("[bench %s]" % time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def spawn(name, argv, out_dir, env=None):
    out = open(out_dir / f"{name}.out", "ab")
    p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True, cwd=out_dir, env=env)
    p.bench_name = name
    STARTED.append(p)
    return p


def stop(p, grace=3.0):
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    else:
        # the leader is gone; make sure nothing of its group is left
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if p in STARTED:
        STARTED.remove(p)


def stop_all():
    for p in list(reversed(STARTED)):
        stop(p, grace=2.0)


def on_signal(sig, _frm):
    log(f"signal {sig}: stopping everything")
    stop_all()
    sys.exit(128 + sig)


# ------------------------------------------------------------------------------------------
# /proc
# ------------------------------------------------------------------------------------------

def proc_stat(pid):
    """(utime+stime ticks, pgid, ppid) of one process, None if gone."""
    try:
        s = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    f = s[s.rindex(")") + 2:].split()
    # f[0] = state (field 3); ppid field 4 -> f[1]; pgrp 5 -> f[2]; utime 14 -> f[11]; stime 15 -> f[12]
    return int(f[11]) + int(f[12]), int(f[2]), int(f[1])


def group_ticks(pgid):
    """CPU ticks of all live processes in process group `pgid`."""
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        st = proc_stat(int(d))
        if st and st[1] == pgid:
            total += st[0]
    return total


def rss_kb(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pid_of(prog, pgid):
    """The pid in group `pgid` whose comm is `prog` (the process under `timeout`)."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            comm = open(f"/proc/{d}/comm").read().strip()
        except OSError:
            continue
        if comm == prog:
            st = proc_stat(int(d))
            if st and st[1] == pgid:
                return int(d)
    return None


def udp_errors():
    """(RcvbufErrors, SndbufErrors, InErrors) of the whole UDP stack: datagrams the kernel dropped."""
    lines = [l.split() for l in open("/proc/net/snmp") if l.startswith("Udp:")]
    if len(lines) < 2:
        return (0, 0, 0)
    d = dict(zip(lines[0][1:], lines[1][1:]))
    return (int(d.get("RcvbufErrors", 0)), int(d.get("SndbufErrors", 0)), int(d.get("InErrors", 0)))


def loadavg():
    return open("/proc/loadavg").read().split()[:3]


# ------------------------------------------------------------------------------------------
# SIPp
# ------------------------------------------------------------------------------------------

def sipp_argv(scenario, transport, local_port, extra, limit_s):
    return ["timeout", "-k", "5", str(int(limit_s)), "sipp", "-sf", str(BENCH / "sipp" / scenario),
            "-t", transport, "-i", "127.0.0.1", "-p", str(local_port), "-buff_size", "4194304",
            "-nostdin", "-trace_err", "-trace_stat", "-fd", "1"] + extra


def read_stat(path):
    """Rows of a SIPp -trace_stat file as dicts (the time fields keep their epoch)."""
    try:
        lines = [l for l in open(path, errors="replace").read().splitlines() if l.strip()]
    except OSError:
        return []
    if len(lines) < 2:
        return []
    head = lines[0].split(";")
    rows = []
    for l in lines[1:]:
        v = l.split(";")
        if len(v) < len(head) - 1:
            continue
        rows.append(dict(zip(head, v)))
    return rows


def stat_int(row, key):
    try:
        return int(float(row.get(key, "0") or 0))
    except ValueError:
        return 0


def stat_epoch(row, key):
    try:
        return float(row[key].split("\t")[-1])
    except (KeyError, ValueError):
        return 0.0


def read_rtt(path):
    """(date_ms since SIPp start, response ms) of every set-up time."""
    out = []
    try:
        for l in open(path, errors="replace"):
            p = l.strip().split(";")
            if len(p) >= 2 and p[0] and p[0][0].isdigit():
                try:
                    out.append((float(p[0]), float(p[1])))
                except ValueError:
                    pass
    except OSError:
        pass
    return out


def pct(sorted_vals, q):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, int(round(q / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[i]


# ------------------------------------------------------------------------------------------
# the lab
# ------------------------------------------------------------------------------------------

# drbridge's media port ranges in the bench: 6,000 pairs per side, for the concurrency of the
# fastest signalling steps (7,000 calls/s x ~0.75 s from INVITE to BYE is ~5,300 sessions, and
# each signalling shard has its share of the pairs); clear of the SIP ports (--port-base 25060
# and up, the PBX UAC's media port 26000) and of the Teams UAS's fixed media port 50000. Pairs
# stay bound once used: 6,000 x 2 sockets toward the PBX and 6,000 toward Teams (RTCP muxed)
# stay under a hard open-file limit of 20,000 (what this machine has).
MEDIA_PBX = (27000, 38999)
MEDIA_TEAMS = (51000, 62999)


class Lab:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.work)
        b = args.port_base
        self.p = {
            "pbx_listen": b,          # drbridge UDP toward the PBX
            "teams_listen": b + 1,    # drbridge TLS for the proxies
            "proxy_tls": b + 2,       # stunnel server: the Teams proxy drbridge connects to
            "proxy_sipp": b + 3,      # SIPp Teams UAS behind it (TCP)
            "teams_out": b + 4,       # stunnel client: SIPp Teams UAC -> drbridge
            "kamailio": b + 10,       # Kamailio UDP
            "pbx_uas": b + 20,        # SIPp PBX UAS (the trunk address)
            "pbx_uac": b + 21,        # SIPp PBX UAC
            "teams_uac": b + 22,      # SIPp Teams UAC local TCP port
            "teams_media": 50000,     # the Teams UAS's media port (fixed in its SDP)
            "pbx_media": b + 940,     # the PBX UAC's media port (-mp)
            "admin": b + 30,          # drbridge admin server (/metrics: the relay's counters)
        }
        self.binary = Path(args.binary).resolve()
        self.certs = self.work / "certs"

    def prepare(self):
        self.work.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([str(self.binary), "lab-certs", "--dir", str(self.certs), "--fqdn", FQDN],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"drbridge lab-certs failed: {r.stderr}")
        self.write_drbridge_config()
        self.write_stunnel_config()

    def write_drbridge_config(self):
        p, c = self.p, self.certs
        cfg = f"""# written by bench/bench.py: the lab config defaults, with the capacity limits raised
[sbc]
fqdn = "{FQDN}"
user_agent = "drbridge"
max_calls = {self.args.max_calls}
signalling_threads = {self.args.signalling_threads}
data_dir = "var"

[teams]
listen = "127.0.0.1:{p['teams_listen']}"
contact_port = {p['teams_listen']}
options_interval_secs = 240
failover_timeout_secs = 10
tls_cert = "{c / 'sbc.crt'}"
tls_key = "{c / 'sbc.key'}"
tls_ca = "{c / 'ca.crt'}"
lab_certs = false

[[teams.proxies]]
host = "sip.pstnhub.microsoft.com"
port = 5061
address = "127.0.0.1:{p['proxy_tls']}"

[pbx]
name = "bench-pbx"
listen = "127.0.0.1:{p['pbx_listen']}"
address = "127.0.0.1:{p['pbx_uas']}"
transport = "udp"
options_interval_secs = 0

[numbers]
[[numbers.to_teams]]
match = '^(47\\d\\d)$'
replace = '+468123$1'
[[numbers.to_teams]]
match = '^0(\\d{{6,12}})$'
replace = '+46$1'
[[numbers.to_pbx]]
match = '^\\+468123(47\\d\\d)$'
replace = '$1'

[[routes]]
match = '^\\+46812347\\d\\d$'
trunk = "pbx"

[limits]
max_transactions = {self.args.max_transactions}

[log]
level = "{self.args.log_level}"
{self.media_toml()}"""
        (self.work / "drbridge.toml").write_text(cfg)

    def media_toml(self):
        """[media]: anchoring as shipped (on) unless --no-media-anchoring. Sessions and ports sized
        for the concurrency of the stage (cps x hold); the default max_sessions 2000 would turn
        into 503s above ~3000 cps with 0-1 s calls."""
        if not self.args.media_anchoring:
            return "\n[media]\nenabled = false\n"
        (self.work / "admin-token").write_text("bench-admin-token\n")
        return f"""
[admin]
enabled = true
listen = "127.0.0.1:{self.p['admin']}"
token_file = "{self.work / 'admin-token'}"

[media]
enabled = true
teams_ip = "127.0.0.1"
pbx_ip = "127.0.0.1"
teams_port_min = {MEDIA_TEAMS[0]}
teams_port_max = {MEDIA_TEAMS[1]}
pbx_port_min = {MEDIA_PBX[0]}
pbx_port_max = {MEDIA_PBX[1]}
max_sessions = {self.args.media_sessions}
"""

    def write_stunnel_config(self):
        p, c = self.p, self.certs
        cfg = f"""; written by bench/bench.py: the Teams side's TLS for SIPp (built without TLS)
foreground = yes
pid =
debug = 4
output = {self.work / 'stunnel.log'}

[teams-proxy]
; drbridge -> "sip.pstnhub.microsoft.com": Teams certificate, drbridge's client cert required
accept = 127.0.0.1:{p['proxy_tls']}
connect = 127.0.0.1:{p['proxy_sipp']}
cert = {c / 'teams.crt'}
key = {c / 'teams.key'}
CAfile = {c / 'ca.crt'}
requireCert = yes
verifyChain = yes
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1

[teams-uac]
; SIPp Teams UAC -> drbridge as a proxy: Teams certificate, SNI and check of the SBC FQDN
client = yes
accept = 127.0.0.1:{p['teams_out']}
connect = 127.0.0.1:{p['teams_listen']}
cert = {c / 'teams.crt'}
key = {c / 'teams.key'}
CAfile = {c / 'ca.crt'}
verifyChain = yes
checkHost = {FQDN}
sni = {FQDN}
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
"""
        (self.work / "stunnel.conf").write_text(cfg)

    def wait_port(self, proto, port, timeout=10.0):
        """Waits until something listens on 127.0.0.1:port (tcp or udp), via /proc/net."""
        hexport = "%04X" % port
        files = ["/proc/net/tcp"] if proto == "tcp" else ["/proc/net/udp"]
        end = time.time() + timeout
        while time.time() < end:
            for f in files:
                for line in open(f).read().splitlines()[1:]:
                    cols = line.split()
                    if cols[1].endswith(":" + hexport) and (proto == "udp" or cols[3] == "0A"):
                        return True
            time.sleep(0.05)
        return False

    def port_busy(self, proto, port):
        hexport = "%04X" % port
        for line in open(f"/proc/net/{proto}").read().splitlines()[1:]:
            cols = line.split()
            if cols[1].endswith(":" + hexport) and (proto == "udp" or cols[3] == "0A"):
                return True
        return False


# ------------------------------------------------------------------------------------------
# one target: its long-running processes, then the rate steps
# ------------------------------------------------------------------------------------------

class Target:
    name = ""
    label = ""

    def __init__(self, lab, out):
        self.lab = lab
        self.out = out
        self.procs = {}  # role -> Popen (long-running: server under test, stunnel, uas)

    # server under test: pid whose RSS we track, and the CPU groups we count
    def start(self):
        raise NotImplementedError

    def uac(self, rate, calls, limit_s, stat, rtt_dir):
        raise NotImplementedError

    def sut_pid(self):
        return None

    def stop(self):
        for p in reversed(list(self.procs.values())):
            stop(p)
        self.procs = {}

    def alive(self):
        return all(p.poll() is None for p in self.procs.values())

    def ticks(self):
        return {role: group_ticks(p.pid) for role, p in self.procs.items()}

    def uas_failures(self):
        if "sipp_uas" not in self.procs:
            return 0, 0
        rows = read_stat(self.out / "uas_stat.csv")
        if not rows:
            return 0, 0
        last = rows[-1]
        return stat_int(last, "FailedCall(C)"), stat_int(last, "SuccessfulCall(C)")

    def start_drbridge(self):
        lab = self.lab
        env = dict(os.environ)
        # main.rs takes its filter from RUST_LOG (default info), not from [log] level
        env["RUST_LOG"] = lab.args.log_level
        p = spawn("drbridge", [str(lab.binary), "run", "--config", str(lab.work / "drbridge.toml")], self.out, env)
        self.procs["drbridge"] = p
        if not lab.wait_port("udp", lab.p["pbx_listen"]) or not lab.wait_port("tcp", lab.p["teams_listen"]):
            raise RuntimeError("drbridge did not start; see " + str(self.out / "drbridge.out"))

    def start_stunnel(self):
        lab = self.lab
        p = spawn("stunnel", ["stunnel", str(lab.work / "stunnel.conf")], self.out)
        self.procs["stunnel"] = p
        if not lab.wait_port("tcp", lab.p["proxy_tls"]) or not lab.wait_port("tcp", lab.p["teams_out"]):
            raise RuntimeError("stunnel did not start; see " + str(lab.work / "stunnel.log"))

    def start_uas(self, scenario, transport, port):
        lab = self.lab
        argv = sipp_argv(scenario, transport, port,
                         ["-stf", str(self.out / "uas_stat.csv"), "-error_file", str(self.out / "uas_err.log")],
                         self.lab.args.budget_s)
        self.procs["sipp_uas"] = spawn("sipp_uas", argv, self.out)
        if not lab.wait_port("tcp" if transport == "t1" else "udp", port):
            raise RuntimeError("SIPp UAS did not start; see " + str(self.out / "sipp_uas.out"))


class DrbridgePbxToTeams(Target):
    name = "drbridge_pbx_to_teams"
    label = "drbridge PBX->Teams (UDP->TLS)"

    def start(self):
        self.start_uas("teams_uas.xml", "t1", self.lab.p["proxy_sipp"])
        self.start_stunnel()
        self.start_drbridge()

    def sut_pid(self):
        return self.procs["drbridge"].pid

    def uac(self, rate, calls, limit_s, stat, rtt_dir):
        p = self.lab.p
        return sipp_argv("pbx_uac.xml", "u1", p["pbx_uac"],
                         [f"127.0.0.1:{p['pbx_listen']}", "-s", "0701234567"], limit_s)


class DrbridgeTeamsToPbx(Target):
    name = "drbridge_teams_to_pbx"
    label = "drbridge Teams->PBX (TLS->UDP)"

    def start(self):
        self.start_uas("pbx_uas.xml", "u1", self.lab.p["pbx_uas"])
        self.start_stunnel()
        self.start_drbridge()

    def sut_pid(self):
        return self.procs["drbridge"].pid

    def uac(self, rate, calls, limit_s, stat, rtt_dir):
        p = self.lab.p
        return sipp_argv("teams_uac.xml", "t1", p["teams_uac"],
                         [f"127.0.0.1:{p['teams_out']}", "-s", "+4681234711"], limit_s)


class KamailioPeer(Target):
    name = "kamailio"
    label = "Kamailio stateful proxy (UDP->UDP)"

    def start(self):
        lab = self.lab
        self.start_uas("pbx_uas.xml", "u1", lab.p["pbx_uas"])
        argv = ["kamailio", "-f", str(BENCH / "kamailio" / "kamailio.cfg"), "-DD", "-E", "-m", "2048", "-M", "16", "-x", lab.args.kamailio_mem, "-X", lab.args.kamailio_mem,
                "-P", str(self.out / "kamailio.pid"), "-w", str(self.out),
                "-A", f"LISTEN=udp:127.0.0.1:{lab.p['kamailio']}",
                "-A", f'PBX="sip:127.0.0.1:{lab.p["pbx_uas"]}"',
                "-A", f"WORKERS={lab.args.kamailio_workers}"]
        self.procs["kamailio"] = spawn("kamailio", argv, self.out)
        if not lab.wait_port("udp", lab.p["kamailio"]):
            raise RuntimeError("Kamailio did not start; see " + str(self.out / "kamailio.out"))
        time.sleep(1.0)  # its worker processes fork after the socket is bound

    def sut_pid(self):
        return self.procs["kamailio"].pid

    def uac(self, rate, calls, limit_s, stat, rtt_dir):
        p = self.lab.p
        return sipp_argv("pbx_uac.xml", "u1", p["pbx_uac"],
                         [f"127.0.0.1:{p['kamailio']}", "-s", "4711"], limit_s)


def pss_kb(pid):
    """Proportional set size: shared pages (Kamailio's shared memory) split among the processes."""
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return rss_kb(pid)


def group_rss_kb(pgid):
    """Memory of a process group: RSS of a single process, else the sum of PSS."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = proc_stat(int(d))
            if st and st[1] == pgid:
                pids.append(int(d))
    if len(pids) == 1:
        return rss_kb(pids[0])
    return sum(pss_kb(p) for p in pids)


def run_step(t, rate, secs, step_dir, perf=False, watch=None):
    """One rate step of target t. Returns the step's record."""
    step_dir.mkdir(parents=True, exist_ok=True)
    calls = max(1, int(round(rate * secs)))
    args = t.lab.args
    # worst case of a failing call: the recv timeout, then the BYE retransmissions (0.5+1+2+4+4 s)
    limit_s = secs + args.recv_timeout_ms / 1000.0 + 15
    stat = step_dir / "uac_stat.csv"
    argv = t.uac(rate, calls, limit_s, stat, step_dir) + [
        "-r", str(rate), "-rp", "1000", "-m", str(calls), "-l", str(calls),
        "-recv_timeout", str(args.recv_timeout_ms), "-max_retrans", "5", "-stf", str(stat), "-trace_rtt", "-rtt_freq", "1",
        "-error_file", str(step_dir / "uac_err.log")]
    uas_fail0, uas_ok0 = t.uas_failures()
    log_path = t.out / ("drbridge.out" if "drbridge" in t.procs else "kamailio.out")
    log_off = log_path.stat().st_size if log_path.exists() else 0
    t0_ticks = t.ticks()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    udp0 = udp_errors()
    sut_pid = t.sut_pid()
    sut_group = sut_pid  # the server's process group = its leader's pid
    rss_peak = 0
    t0 = time.time()
    uac = spawn("sipp_uac", argv, step_dir)
    perf_proc = None
    if perf:
        perf_proc = subprocess.Popen(["perf", "record", "-F", "199", "--call-graph", "dwarf,16384", "-o", str(step_dir / "perf.data"),
                                      "-p", str(sut_pid), "--", "sleep", str(max(1, secs - 1))],
                                     stdout=open(step_dir / "perf.out", "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        STARTED.append(perf_proc)
    watched = None
    while uac.poll() is None:
        rss_peak = max(rss_peak, group_rss_kb(sut_group))
        if watch:
            watched = watch()
        time.sleep(0.25)
    t1 = time.time()
    if uac in STARTED:
        STARTED.remove(uac)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    udp1 = udp_errors()
    t1_ticks = t.ticks()
    if perf_proc is not None:
        try:
            perf_proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
        stop(perf_proc)
    time.sleep(1.3)  # the UAS writes its statistics every second
    uas_fail1, uas_ok1 = t.uas_failures()
    wall = t1 - t0

    rows = read_stat(stat)
    last = rows[-1] if rows else {}
    warnings = server_warnings(log_path, log_off)
    ok = stat_int(last, "SuccessfulCall(C)")
    failed = stat_int(last, "FailedCall(C)")
    created = stat_int(last, "TotalCallCreated")
    retrans = stat_int(last, "Retransmissions(C)")
    rtt_files = sorted(step_dir.glob("*_rtt.csv"))
    rtts = read_rtt(rtt_files[0]) if rtt_files else []
    vals = sorted(v for _, v in rtts)
    offered_span = secs
    if rtts:
        # set-up completions per second: answered calls over the span from the first INVITE to the last 200
        invites = [d - v for d, v in rtts]
        first_invite = min(invites)
        last_200 = max(d for d, _ in rtts)
        span = max((last_200 - first_invite) / 1000.0, secs * (calls - 1) / calls, 1e-3)
        completed_cps = min(ok, len(rtts)) / span
        # offered: calls started over the time SIPp took to start them (it lags when it is starved)
        offered_span = max(secs, (max(invites) - first_invite) / 1000.0 + 1.0 / rate)
    else:
        completed_cps = 0.0
    cpu = {}
    for role in t0_ticks:
        d = t1_ticks.get(role, 0) - t0_ticks[role]
        cpu[role] = round(100.0 * d / HZ / wall, 1) if wall > 0 else None
    cpu["sipp_uac"] = round(100.0 * ((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)) / wall, 1)
    sut_role = "kamailio" if "kamailio" in cpu else "drbridge"
    rec = {
        "rate": rate,
        "secs": secs,
        "calls": calls,
        "created": created,
        "offered_cps": round(created / offered_span, 1) if offered_span else None,
        "completed_cps": round(completed_cps, 1),
        "successful": ok,
        "failed_uac": failed,
        "failed_uas": max(0, uas_fail1 - uas_fail0),
        "retransmissions": retrans,
        "udp_rcvbuf_drops": udp1[0] - udp0[0],
        "udp_sndbuf_drops": udp1[1] - udp0[1],
        "p50_ms": pct(vals, 50),
        "p99_ms": pct(vals, 99),
        "max_ms": vals[-1] if vals else None,
        "server_warnings": warnings,
        "sut_cpu_pct": cpu.get(sut_role),
        "sut_rss_mb": round(rss_peak / 1024.0, 1),
        "cpu_pct": cpu,
        "wall_s": round(wall, 2),
        "sipp_rc": uac.returncode,
        "loadavg": loadavg(),
    }
    if watch:
        rec["watched"] = watched
    rec["clean"] = (rec["failed_uac"] == 0 and rec["failed_uas"] == 0 and created >= calls and ok >= calls
                    and rec["p99_ms"] is not None and rec["p99_ms"] <= P99_LIMIT_MS and uac.returncode == 0)
    return rec


def server_warnings(path, offset):
    """Counts of the server's WARN/ERROR log lines written since `offset`, by message."""
    import re
    counts = {}
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return counts
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    for line in data.splitlines():
        line = ansi.sub("", line)
        m = re.search(r"\b(WARN|ERROR)\s+\S+:\s+(.*)", line)
        if not m:
            m = re.search(r"(WARNING|ERROR|CRITICAL): <[^>]+> \[[^\]]+\]: (.*)", line)  # Kamailio
        if m:
            msg = re.sub(r"\s+\S+=.*$", "", m.group(2)).strip()[:80]
            counts[msg] = counts.get(msg, 0) + 1
    return counts


def log_step(t, rec, what=""):
    log(f"{t.name}{what} {rec['rate']:>6} cps: offered {rec['offered_cps']}, completed {rec['completed_cps']}, "
        f"failed {rec['failed_uac']}+{rec['failed_uas']}, p50 {rec['p50_ms']} p99 {rec['p99_ms']} ms, "
        f"warn {rec['server_warnings']}, retrans {rec['retransmissions']}, udp drops {rec['udp_rcvbuf_drops']}, "
        f"cpu {rec['cpu_pct']}, rss {rec['sut_rss_mb']} MB, {'clean' if rec['clean'] else 'NOT CLEAN'}")


def costs(args, secs, perf):
    """Seconds a target's parts take: (one soak, the perf step, the drain after an unclean step:
    its calls in flight time out first, SIPp -recv_timeout)."""
    soak_cost = (args.soak_secs + args.recv_timeout_ms / 1000.0 + 8) if args.soak_secs else 0
    perf_cost = (secs + 4) if perf else 0
    drain_s = args.recv_timeout_ms / 1000.0 + 1.5
    return soak_cost, perf_cost, drain_s


def target_cost(args, secs, perf):
    """What one target needs at least: a ladder of six steps, a bisection, the perf step and one soak."""
    soak_cost, perf_cost, drain_s = costs(args, secs, perf)
    return 7 * (secs + 3.5) + drain_s + perf_cost + soak_cost


def profiled(args, name):
    """Whether the target gets a perf record at its knee (drbridge, default mode)."""
    return not args.quick and not args.no_profile and name.startswith("drbridge")


def run_target(t, rates, secs, results_dir, perf_rate=None, deadline=None, retry_deadline=None):
    """The ladder (until the first unclean step), one bisection between the last clean and the
    first unclean rate, a short perf record at the knee, then a soak at the knee longer than
    64*T1 (32 s) so that the lingering transactions and call clean-ups are in steady state.
    An unclean soak is retried at 9/10 of the rate until `retry_deadline` (later than `deadline`:
    it may use time of the targets that follow, as long as what they need at least is left)."""
    args = t.lab.args
    out = t.out
    deadline = min(deadline or t.lab.deadline, t.lab.deadline)
    retry_deadline = max(deadline, min(retry_deadline or deadline, t.lab.deadline))
    # after an unclean step, wait drain_s until its calls in flight have timed out, so that they
    # do not count against the next step
    soak_cost, perf_cost, drain_s = costs(args, secs, perf_rate)
    ladder_deadline = deadline - soak_cost - perf_cost - drain_s
    out.mkdir(parents=True, exist_ok=True)
    log(f"== {t.label}: start")
    t.start()
    time.sleep(0.5)
    steps = []
    knee = None
    first_bad = None
    deadline_hit = False
    n = 0

    def step(rate, secs, name, perf=False):
        nonlocal n
        rec = run_step(t, rate, secs, out / f"{n:02d}_{name}_{rate}", perf=perf)
        n += 1
        return rec

    def usable(limit):
        nonlocal deadline_hit
        if time.time() > limit:
            deadline_hit = True
            log(f"{t.name}: time share used up")
            return False
        if not t.alive():
            log(f"{t.label}: a process died: " + ", ".join(r for r, p in t.procs.items() if p.poll() is not None))
            return False
        return True

    profile = None
    soak = []
    try:
        for rate in rates:
            if not usable(ladder_deadline):
                break
            rec = step(rate, secs, "step")
            steps.append(rec)
            log_step(t, rec)
            if not rec["clean"]:
                first_bad = rec
                break
            knee = rec
            time.sleep(args.settle_s)
        # one bisection between the last clean rate and the first unclean one
        if first_bad and args.bisect:
            lo = knee["rate"] if knee else 0
            mid = int(round((lo + first_bad["rate"]) / 2.0 / 50.0) * 50)
            if lo < mid < first_bad["rate"] and usable(ladder_deadline):
                time.sleep(drain_s)  # let the overload drain: calls in flight time out first
                rec = step(mid, secs, "bisect")
                steps.append(rec)
                log_step(t, rec, " (bisect)")
                if rec["clean"]:
                    knee = rec
        if perf_rate and knee and shutil.which("perf") and usable(deadline - soak_cost):
            log(f"{t.name}: perf record at {knee['rate']} cps (the knee)")
            time.sleep(args.settle_s + 1)
            rec = step(knee["rate"], secs, "profile", perf=True)
            # perf report takes a while (DWARF unwinding): done after all measurements
            profile = {"dir": str(out / f"{n - 1:02d}_profile_{knee['rate']}"), "step": rec}
        if args.soak_secs and knee:
            rate = knee["rate"]
            for attempt in range(2):
                if not usable(deadline if attempt == 0 else retry_deadline):
                    break
                # a fresh server for the soak: the ladder ended in an overload, and what an overload
                # leaves behind (e.g. media ports) must not decide the sustained rate; whether
                # the server recovers from an overload is visible in the bisect step
                t.stop()
                time.sleep(1.0)
                t.start()
                time.sleep(1.0)
                rec = step(rate, args.soak_secs, "soak")
                soak.append(rec)
                log_step(t, rec, f" (soak {args.soak_secs:.0f} s)")
                if rec["clean"]:
                    break
                rate = int(round(rate * 0.9 / 50.0) * 50)
                if rate <= 0 or time.time() + soak_cost + drain_s > retry_deadline:
                    break
    finally:
        t.stop()
    sustained = next((r for r in soak if r["clean"]), None)
    return {"target": t.name, "label": t.label, "steps": sorted(steps, key=lambda r: r["rate"]), "knee": knee,
            "soak": soak, "sustained": sustained, "profile": profile, "deadline_hit": deadline_hit}


def profile_report(step_dir, results_dir, name, rec):
    data = step_dir / "perf.data"
    if not data.exists():
        return None
    txt = results_dir / f"profile_{name}.txt"
    with open(txt, "w") as f:
        f.write(f"# perf record -F 199 --call-graph dwarf of the server at {rec['rate']} cps (offered {rec['offered_cps']}, "
                f"completed {rec['completed_cps']}, p99 {rec['p99_ms']} ms, cpu {rec['cpu_pct']})\n\n")
        f.write("## flat (self time by symbol)\n")
        f.flush()
        subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--no-inline", "--sort", "dso,symbol", "--stdio",
                        "-g", "none", "--percent-limit", "0.7"], stdout=f, stderr=subprocess.DEVNULL)
        f.write("\n## inclusive (self + callees), drbridge, TLS, media and kernel frames only, >= 1 %\n")
        f.flush()
        r = subprocess.run(["perf", "report", "-i", str(data), "--children", "--no-inline", "--sort", "symbol", "--stdio",
                            "-g", "none", "--percent-limit", "1"], capture_output=True, text=True)
        import re
        keep = re.compile(r"drbridge::|rustls|ring_|sys_|udp_|tcp_|epoll|futex|schedule|malloc|bind|socket|"
                          r"spawn|close|regex|tracing")
        for line in r.stdout.splitlines():
            if line.startswith("#") or "(inlined)" in line or not keep.search(line):
                continue
            f.write(line.rstrip()[:160] + "\n")
    return str(txt.relative_to(ROOT)) if txt.is_relative_to(ROOT) else str(txt)


# ------------------------------------------------------------------------------------------
# output
# ------------------------------------------------------------------------------------------

def machine():
    cpu = ""
    for l in open("/proc/cpuinfo"):
        if l.startswith("model name"):
            cpu = l.split(":", 1)[1].strip()
            break
    mem = 0
    for l in open("/proc/meminfo"):
        if l.startswith("MemTotal"):
            mem = int(l.split()[1]) // 1024
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_mb": mem, "kernel": platform.release(),
            "os": (Path("/etc/debian_version").read_text().strip() if Path("/etc/debian_version").exists() else "")}


def versions():
    def first(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except Exception:
            return ""
    return {"sipp": first(["sipp", "-v"]) if False else first(["sh", "-c", "sipp -v 2>&1 | grep -m1 SIPp"]),
            "kamailio": first(["kamailio", "-v"]),
            "stunnel": first(["sh", "-c", "stunnel -version 2>&1 | grep -m1 stunnel"]),
            "drbridge_commit": first(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])}


def nominal(rec):
    """The step's set rate when SIPp really offered it (within 3 %), else what it offered."""
    if not rec:
        return None
    return rec["rate"] if rec["offered_cps"] >= 0.97 * rec["rate"] else rec["offered_cps"]


def fmt(v, nd=0):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def markdown(res):
    L = []
    m = res["machine"]
    L.append(f"Run {res['started']} ({res['mode']}), {m['cores']} cores {m['cpu']}, {m['mem_mb']} MB, "
             f"Debian {m['os']}, kernel {m['kernel']}; load average before: {' '.join(res['loadavg_before'])}. "
             f"SIPp, stunnel and the server share the same cores. Steps of {res['step_secs']} s, hold 0-1 s "
             f"(uniform), clean = no failed call and set-up p99 <= {int(P99_LIMIT_MS)} ms.")
    L.append("")
    soak_h = f"sustained {res['soak_secs']:.0f} s, cps" if res.get("soak_secs") else "sustained (no soak in this mode)"
    L.append(f"| target | highest clean step, cps | vs Kamailio (steps) | {soak_h} | capacity BHCC | vs Kamailio (capacity) | server CPU | server memory |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    kam = next((t for t in res["targets"] if t["target"] == "kamailio"), None)
    for t in res["targets"]:
        k = t["knee"]
        su = t.get("sustained")
        best = t.get("capacity_cps")
        ratio = fmt(t.get("ratio_vs_kamailio"), 2) if kam else "-"
        ref = su or k
        soak_txt = fmt(t.get("sustained_cps")) if su else ("not clean at " + ", ".join(str(x["rate"]) for x in t["soak"]) if t.get("soak") else "-")
        cut = " (ladder cut by the time budget)" if t.get("deadline_hit") and (not t["steps"] or t["steps"][-1]["clean"]) else ""
        L.append(f"| {t['label']} | {fmt(t.get('knee_cps'))}{cut} | {fmt(t.get('ratio_vs_kamailio_steps'), 2)} | {soak_txt} | "
                 f"{(f'{round(best * 3600):,}') if best else '-'} | {ratio} | "
                 f"{fmt(ref['sut_cpu_pct'] if ref else None)} % | {fmt(ref['sut_rss_mb'] if ref else None)} MB |")
    L.append("")
    L.append("Capacity = the soak rate where a soak ran (default mode), else the highest clean step (--quick).")
    L.append("")
    L.append("Per step (offered = calls started / step time; completed = answered calls / time from first "
             "INVITE to last 200; CPU in % of one core, utime+stime of the process group):")
    L.append("")
    L.append("| target | rate | offered | completed | failed | p50 ms | p99 ms | server CPU | RSS MB | stunnel CPU | SIPp uac/uas CPU | clean |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|")
    for t in res["targets"]:
        for s in t["steps"] + t.get("soak", []):
            c = s["cpu_pct"]
            rate_txt = f"{s['rate']} ({s['secs']:.0f} s soak)" if s in t.get("soak", []) else str(s["rate"])
            L.append(f"| {t['target']} | {rate_txt} | {fmt(s['offered_cps'])} | {fmt(s['completed_cps'])} | "
                     f"{s['failed_uac'] + s['failed_uas']} | {fmt(s['p50_ms'])} | {fmt(s['p99_ms'])} | "
                     f"{fmt(s['sut_cpu_pct'])} % | {fmt(s['sut_rss_mb'], 1)} | {fmt(c.get('stunnel'))} | "
                     f"{fmt(c.get('sipp_uac'))}/{fmt(c.get('sipp_uas'))} | {'yes' if s['clean'] else 'no'} |")
    L.append("")
    L.append("Seed PBX figures (ms-teams-solution-guide.txt) against the lowest drbridge knee: ")
    L.append("")
    dr = [t["capacity_cps"] for t in res["targets"] if t["target"].startswith("drbridge") and t.get("capacity_cps")]
    low = min(dr) if dr else None
    L.append("| PBX | BHCC | cps | drbridge / PBX |")
    L.append("|---|---:|---:|---:|")
    for n, b in SEED_PBX_BHCC:
        L.append(f"| {n} | {b:,} | {b / 3600:.1f} | {(f'{low * 3600 / b:,.0f}x') if low else '-'} |")
    if res.get("media"):
        me = res["media"]
        L.append("")
        if me.get("steps"):
            player = (f"{TONE_PACKETS} G.711 A-law packets (a 7 s tone, SIPp rtp_stream)" if me.get("player", "pcap") != "pcap"
                      else f"{PCAP_PACKETS} G.711 packets (7 s, g711a.pcap, SIPp pcap play)")
            rmem = (f" During the stage net.core.rmem_default was {me['rmem_default_raised_to']} bytes (restored after), "
                    f"for SIPp's media and echo sockets, which do not size their own buffers." if me.get("rmem_default_raised_to") else "")
            L.append(f"Media ({me['label']}): each call plays {player} "
                     f"from the PBX side; drbridge relays them as SRTP to the Teams side, whose SIPp echoes "
                     f"them back (SRTP -> RTP).{rmem} End-to-end loss = packets a complete play would send on the "
                     f"PBX side that the Teams side's echo never counted: it includes what SIPp did "
                     f"not send in time and what SIPp's echo socket dropped. drbridge loss = drbridge's "
                     f"own account from /metrics: packets that reached its sockets (read, or dropped by the "
                     f"kernel on a full socket buffer) and were not sent on. Packets that arrive on a call's ports "
                     f"after it ended (a player running late under load, and its echo) are "
                     f"dropped by design and counted apart.")
            L.append("")
            L.append("| concurrent calls (target) | peak (SIPp) | cps | calls ok | failed | packets relayed | drbridge loss % | arrived after the call ended | end-to-end loss % | set-up p99 ms | server CPU | SIPp UAC CPU | RSS MB |")
            L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for st in me["steps"]:
                late = (st.get("relay_dropped") or {}).get("dropped_unassigned", 0) if isinstance(st.get("relay_dropped"), dict) else "-"
                L.append(f"| {st['concurrent_target']} | {st.get('concurrent_peak') or '-'} | {st['rate']} | {st['successful']} | "
                         f"{st['failed_uac'] + st['failed_uas']} | {fmt(st.get('relay_sent'))} | {fmt(st.get('relay_loss_pct'), 3)} | {late} | "
                         f"{fmt(st['rtp_loss_pct'], 3)} | {fmt(st['p99_ms'])} | "
                         f"{fmt(st['sut_cpu_pct'])} % | {fmt((st.get('cpu_pct') or {}).get('sipp_uac'))} % | {fmt(st['sut_rss_mb'], 1)} |")
        else:
            L.append(f"Media stage: {me.get('status')}")
    return "\n".join(L) + "\n"


def plot(res, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001
        log(f"no plot (matplotlib: {e})")
        return False
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5))
    colors = {"drbridge_pbx_to_teams": "tab:blue", "drbridge_teams_to_pbx": "tab:green", "kamailio": "tab:red"}
    top = 0
    for t in res["targets"]:
        st = t["steps"]
        if not st:
            continue
        x = [s["offered_cps"] for s in st]
        top = max(top, max(x))
        col = colors.get(t["target"], None)
        a1.plot(x, [s["completed_cps"] for s in st], "o-", color=col, label=t["label"])
        bad = [s for s in st if not s["clean"]]
        a1.plot([s["offered_cps"] for s in bad], [s["completed_cps"] for s in bad], "x", color="black", ms=10)
        a2.plot(x, [max(s["p99_ms"] or 0, 0.5) for s in st], "o-", color=col, label=t["label"] + " p99")
        a2.plot(x, [max(s["p50_ms"] or 0, 0.5) for s in st], ".:", color=col, label=t["label"] + " p50")
        if t["knee"]:
            a1.axvline(t["knee"]["offered_cps"], color=col, ls="--", lw=0.8)
        for sk in t.get("soak", []):
            a1.plot([sk["offered_cps"]], [sk["completed_cps"]], "*", color=col, ms=14,
                    mec="black" if sk["clean"] else "red",
                    label=f"{t['target']} {sk['secs']:.0f} s soak ({'clean' if sk['clean'] else 'not clean'})")
    a1.plot([0, top], [0, top], color="grey", lw=0.8, ls=":", label="completed = offered")
    a1.set_xlabel("offered calls/s")
    a1.set_ylabel("completed calls/s")
    a1.set_title("Throughput (x = step not clean, dashed = highest clean step, * = soak)")
    a1.legend(fontsize=8)
    a1.grid(alpha=0.3)
    a2.set_yscale("log")
    a2.axhline(P99_LIMIT_MS, color="black", ls="--", lw=0.8, label="200 ms limit")
    a2.set_xlabel("offered calls/s")
    a2.set_ylabel("INVITE -> 200 set-up time, ms (log)")
    a2.set_title("Response time")
    a2.legend(fontsize=7)
    a2.grid(alpha=0.3, which="both")
    m = res["machine"]
    fig.suptitle(f"drbridge capacity, {res['started']} ({res['mode']}), {m['cores']} cores {m['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


# ------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short steps, fewer rates (< 2 minutes)")
    ap.add_argument("--media", action="store_true", help="also the media stage (G.711 pcap play)")
    ap.add_argument("--rates", help="comma-separated call rates (overrides the mode's ladder)")
    ap.add_argument("--step-secs", type=float, help="seconds of offered load per step")
    ap.add_argument("--targets", default="drbridge_pbx_to_teams,drbridge_teams_to_pbx,kamailio")
    ap.add_argument("--no-profile", action="store_true", help="skip perf record at the knee")
    ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "drbridge"))
    ap.add_argument("--work", default=str(BENCH / "results" / "work"))
    ap.add_argument("--results", default=str(BENCH / "results"))
    ap.add_argument("--port-base", type=int, default=25060)
    ap.add_argument("--max-calls", type=int, default=1000000,
                    help="drbridge sbc.max_calls (ended calls count for 32 s: the default 10000 caps ~300 cps)")
    ap.add_argument("--signalling-threads", type=int, default=0,
                    help="drbridge sbc.signalling_threads (0 = one per core, drbridge's default)")
    ap.add_argument("--max-transactions", type=int, default=4000000, help="drbridge limits.max_transactions")
    ap.add_argument("--log-level", default="warn")
    ap.add_argument("--media-levels", help="media stage: concurrent calls per level (default 250,500,1000,2000,2500)")
    ap.add_argument("--media-secs", type=float, help="media stage: seconds of calls started per level")
    ap.add_argument("--media-player", choices=["rtp_stream", "pcap"], default="rtp_stream",
                    help="media stage: SIPp's rtp_stream of a 7 s A-law tone (default) or pcap play of g711a.pcap")
    ap.add_argument("--no-media-anchoring", dest="media_anchoring", action="store_false",
                    help="[media] enabled = false: signalling only, SDP passed through")
    ap.add_argument("--media-sessions", type=int, default=6000,
                    help="drbridge media.max_sessions (the port ranges give 6,000 pairs per side)")
    ap.add_argument("--kamailio-workers", type=int, default=4)
    ap.add_argument("--kamailio-mem", default="fm",
                    help="Kamailio memory manager: fm (fast, default here), qm (Debian's default, debug: ~3x slower), tlsf")
    ap.add_argument("--soak-secs", type=float, help="soak at the knee this long (default 45 s, 0 in --quick)")
    ap.add_argument("--no-bisect", dest="bisect", action="store_false",
                    help="no bisection step between the last clean and the first unclean rate")
    ap.add_argument("--settle-s", type=float, default=1.0)
    ap.add_argument("--budget-s", type=int, help="time budget of the whole run (steps stop when it is used up)")
    ap.add_argument("--nice", type=int, default=0,
                    help="run the bench and all it starts at this nice value (e.g. -5 on a shared machine)")
    ap.add_argument("--recv-timeout-ms", type=int, help="SIPp -recv_timeout: a call waiting this long fails")
    args = ap.parse_args()

    if args.quick:
        rates = [500, 1000, 2000, 3000, 4000, 6000, 8000]
        secs = args.step_secs or 3
        args.settle_s = 0.5
        args.soak_secs = 0 if args.soak_secs is None else args.soak_secs
        budget = args.budget_s or 105
        args.recv_timeout_ms = args.recv_timeout_ms or 4000
    else:
        rates = [1000, 2000, 3000, 4000, 5000, 6000, 8000, 10000, 12000]
        secs = args.step_secs or 5
        args.soak_secs = 45 if args.soak_secs is None else args.soak_secs
        budget = args.budget_s or 540
        args.recv_timeout_ms = args.recv_timeout_ms or 6000
    if args.rates:
        rates = [int(r) for r in args.rates.split(",")]
    args.media_levels = args.media_levels or ("200,500" if args.quick else "250,500,1000,2000,2500")
    args.media_secs = args.media_secs or (10 if args.quick else 16)
    media_reserve = 0.0
    if args.media:
        # on top of the signalling budget: each level = its calls + the 8 s hold + drain
        media_reserve = len(args.media_levels.split(",")) * (args.media_secs + media_hold_s(args.media_player) + 6 + 3.5)
        budget += media_reserve
    args.budget_s = budget

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # inherited by everything started below
    t_start = time.time()
    results_dir = Path(args.results).resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    lab = Lab(args)
    # a step begun just before the deadline may still take secs + recv timeout + 15 s
    # (and the perf reports at the end, a few seconds)
    margin = (secs + args.recv_timeout_ms / 1000.0 + 5) if args.quick else (secs + args.recv_timeout_ms / 1000.0 + 20)
    lab.deadline = t_start + budget - margin - (0 if args.quick or args.no_profile else 15)
    for name, port in lab.p.items():
        for proto in ("udp", "tcp"):
            if lab.port_busy(proto, port):
                raise SystemExit(f"port {port} ({name}, {proto}) is busy: pick another --port-base")
    lab.prepare()

    res = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "mode": "quick" if args.quick else "default",
        "step_secs": secs,
        "soak_secs": args.soak_secs,
        "rates": rates,
        "machine": machine(),
        "versions": versions(),
        "loadavg_before": loadavg(),
        "nice": args.nice,
        "p99_limit_ms": P99_LIMIT_MS,
        "drbridge_config": {"max_calls": args.max_calls, "signalling_threads": args.signalling_threads, "max_transactions": args.max_transactions,
                            "log_level": args.log_level, "media_anchoring": args.media_anchoring,
                            "media_sessions": args.media_sessions},
        "kamailio_config": {"workers": args.kamailio_workers, "shm_mb": 2048, "mem": args.kamailio_mem},
        "targets": [],
    }
    classes = {c.name: c for c in (DrbridgePbxToTeams, DrbridgeTeamsToPbx, KamailioPeer)}
    try:
        names = [n.strip() for n in args.targets.split(",") if n.strip() and n.strip() != "none"]
        for i, name in enumerate(names):
            c = classes[name]
            t = c(lab, work / c.name)
            perf_rate = profiled(args, name)
            # each target gets an equal share of what is left, so the peer always runs too
            share = (lab.deadline - media_reserve - time.time()) / (len(names) - i)
            # the soak retry may borrow from the targets after this one, down to what they need
            later = sum(target_cost(args, secs, profiled(args, n)) for n in names[i + 1:])
            res["targets"].append(run_target(t, rates, secs, results_dir, perf_rate=perf_rate,
                                             deadline=time.time() + share,
                                             retry_deadline=lab.deadline - media_reserve - later))
        if args.media:
            res["media"] = media_stage(lab, args, results_dir)
    finally:
        stop_all()
    res["loadavg_after"] = loadavg()
    for t in res["targets"]:
        pr = t.get("profile")
        if pr:
            log(f"{t['target']}: perf report")
            t["profile"] = profile_report(Path(pr["dir"]), results_dir, t["target"], pr["step"])
    res["duration_s"] = round(time.time() - t_start, 1)
    # capacity: the sustained (soak) rate where there was a soak, else the highest clean step
    for t in res["targets"]:
        k, su = t["knee"], t.get("sustained")
        t["knee_cps"] = nominal(k)
        t["sustained_cps"] = nominal(su)
        if args.soak_secs:
            t["capacity_cps"] = t["sustained_cps"]
        else:
            t["capacity_cps"] = t["knee_cps"]
        t["capacity_bhcc"] = round(t["capacity_cps"] * 3600) if t["capacity_cps"] else None
    kam = next((t for t in res["targets"] if t["target"] == "kamailio"), None)
    kcps = kam["capacity_cps"] if kam else None
    kknee = kam["knee_cps"] if kam else None
    for t in res["targets"]:
        t["ratio_vs_kamailio"] = round(t["capacity_cps"] / kcps, 2) if (t["capacity_cps"] and kcps) else None
        t["ratio_vs_kamailio_steps"] = round(t["knee_cps"] / kknee, 2) if (t["knee_cps"] and kknee) else None
    res["seed_pbx_bhcc"] = dict(SEED_PBX_BHCC)
    (results_dir / "capacity.json").write_text(json.dumps(res, indent=1))
    md = markdown(res)
    (results_dir / "capacity.md").write_text(md)
    plot(res, results_dir / "capacity.png")
    print(md)
    log(f"done in {res['duration_s']} s; results in {results_dir}")


class DrbridgeMedia(Target):
    """PBX->Teams calls carrying G.711: the PBX UAC plays g711a.pcap (RTP) into drbridge, which
    relays it as SRTP to the Teams UAS; SIPp there echoes every packet (-rtp_echo) and, since
    its answer mirrors drbridge's SRTP key, drbridge authenticates the echo and relays it back
    as RTP to the PBX side."""
    name = "drbridge_media"
    label = "drbridge PBX->Teams with G.711 RTP->SRTP"

    def start(self):
        self.start_stunnel()
        self.start_drbridge()

    def start_level_uas(self, level_dir):
        """A Teams UAS per level: SIPp prints its echo counter only when it quits."""
        lab = self.lab
        level_dir.mkdir(parents=True, exist_ok=True)
        argv = sipp_argv("teams_uas_media.xml", "t1", lab.p["proxy_sipp"],
                         ["-stf", str(self.out / "uas_stat.csv"), "-error_file", str(level_dir / "uas_err.log"),
                          "-mp", str(lab.p["teams_media"]), "-rtp_echo"], lab.args.budget_s)
        self.procs["sipp_uas"] = spawn("sipp_uas", argv, level_dir)
        if not lab.wait_port("tcp", lab.p["proxy_sipp"]):
            raise RuntimeError("SIPp UAS did not start; see " + str(level_dir / "sipp_uas.out"))

    def stop_level_uas(self, level_dir):
        p = self.procs.pop("sipp_uas", None)
        if p:
            stop(p, grace=5.0)
        return sipp_counter(level_dir / "sipp_uas.out", "Total echo RTP pckts 1st stream")

    def sut_pid(self):
        return self.procs["drbridge"].pid

    def uac(self, rate, calls, limit_s, stat, rtt_dir):
        p = self.lab.p
        return sipp_argv(self.scenario(), "u1", p["pbx_uac"],
                         [f"127.0.0.1:{p['pbx_listen']}", "-s", "0701234567", "-mp", str(p["pbx_media"])], limit_s)

    def scenario(self):
        """pbx_uac_media.xml as is (pcap play), or with its play action swapped for rtp_stream of
        a 7 s A-law tone written to the work directory."""
        if self.lab.args.media_player == "pcap":
            return "pbx_uac_media.xml"
        tone = self.out / "tone7s.alaw"
        if not tone.exists():
            tone.write_bytes(alaw_tone(TONE_SECS))
        xml = (BENCH / "sipp" / "pbx_uac_media.xml").read_text()
        play = f'<exec play_pcap_audio="{PCAP}"/>'
        assert play in xml, "pbx_uac_media.xml: play_pcap_audio action not found"
        path = self.out / "pbx_uac_media_stream.xml"
        pause = '<pause milliseconds="8000"/>'
        assert pause in xml, "pbx_uac_media.xml: 8 s pause not found"
        # 3 s of slack after the 7 s tone: rtp_stream threads can run behind under load, and what
        # they send after the BYE cannot be relayed (counted apart as "arrived after the call ended")
        path.write_text(xml.replace(play, f'<exec rtp_stream="{tone},1,8"/>').replace(pause, f'<pause milliseconds="{STREAM_PAUSE_MS}"/>'))
        return str(path)  # absolute: sipp_argv's BENCH / "sipp" / path is this path


def alaw_tone(secs, hz=400, rate=8000):
    """`secs` of a sine tone as G.711 A-law bytes (ITU-T G.711 segment encoding)."""
    import math
    out = bytearray()
    for i in range(secs * rate):
        x = int(8000 * math.sin(2 * math.pi * hz * i / rate))
        sign = 0x80 if x >= 0 else 0
        mag = min((x if x >= 0 else -x - 1) >> 3, 0xFFF)
        if mag < 32:
            v = mag >> 1
        else:
            seg = mag.bit_length() - 5  # 1..7
            v = (seg << 4) | ((mag >> seg) & 0x0F)
        out.append((v | sign) ^ 0x55)
    return bytes(out)


class RmemDefault:
    """Raises net.core.rmem_default for the media stage and puts the old value back (root only;
    otherwise it says so and changes nothing)."""
    PATH = "/proc/sys/net/core/rmem_default"

    def __init__(self, value):
        self.value, self.old = value, None

    def __enter__(self):
        try:
            self.old = open(self.PATH).read().strip()
            if int(self.old) < self.value:
                open(self.PATH, "w").write(str(self.value))
                log(f"media: net.core.rmem_default {self.old} -> {self.value} for SIPp's sockets (restored after)")
            else:
                self.old = None
        except (OSError, ValueError) as e:
            log(f"media: could not raise net.core.rmem_default ({e}); SIPp's echo socket may drop packets")
            self.old = None
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            try:
                open(self.PATH, "w").write(self.old)
            except OSError as e:
                log(f"media: could not restore net.core.rmem_default to {self.old}: {e}")
        return False


def sipp_peak(path):
    """The peak of concurrent calls SIPp printed ('Peak was 1978 calls, after 14 s'), or None."""
    return last_number(path, r"Peak was ([0-9]+) calls")


def sipp_counter(path, label):
    """The last value SIPp printed on its screen for a counter line such as
    '12345 Total echo RTP pckts 1st stream' (the screen is dumped to stdout without a terminal)."""
    import re
    return last_number(path, r"([0-9]+) " + re.escape(label))


def last_number(path, pattern):
    """The number captured by the last match of `pattern` in the file at `path`, or None."""
    import re
    try:
        vals = re.findall(pattern, open(path, errors="replace").read())
    except OSError:
        return None
    return int(vals[-1]) if vals else None


def media_metrics(port):
    """drbridge's relay counters from /metrics (drbridge_media_packets by outcome), or {}."""
    import urllib.request
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": "Bearer bench-admin-token"})
        text = urllib.request.urlopen(req, timeout=5).read().decode()
    except Exception:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("drbridge_media_packets{what=\""):
            k = line.split('"')[1]
            out[k] = int(float(line.rsplit(" ", 1)[1]))
    return out


def range_drops(lo, hi):
    """Datagrams the kernel dropped on UDP sockets bound to local ports lo..hi (/proc/net/udp)."""
    total = 0
    for line in open("/proc/net/udp").read().splitlines()[1:]:
        cols = line.split()
        port = int(cols[1].split(":")[1], 16)
        if lo <= port <= hi:
            try:
                total += int(cols[-1])
            except ValueError:
                pass
    return total


def socket_drops(port):
    """Datagrams the kernel dropped on the UDP sockets bound to local `port` (/proc/net/udp)."""
    return range_drops(port, port)


def media_stage(lab, args, results_dir):
    if not lab.args.media_anchoring:
        return {"status": "skipped: --no-media-anchoring"}
    levels = [int(x) for x in args.media_levels.split(",")]
    hold = media_hold_s(args.media_player)
    secs = args.media_secs
    t = DrbridgeMedia(lab, Path(args.work) / DrbridgeMedia.name)
    t.out.mkdir(parents=True, exist_ok=True)
    log(f"== {t.label}: start")
    steps = []
    with RmemDefault(MEDIA_RMEM_DEFAULT) as rmem:
        t.start()
        try:
            for i, n in enumerate(levels):
                if time.time() > lab.deadline:
                    log("media: time budget used up")
                    break
                rate = max(1, int(round(n / hold)))
                level_dir = t.out / f"{i:02d}_media_{n}"
                t.start_level_uas(level_dir)
                time.sleep(0.5)
                # drbridge's media port ranges (media_toml), not SIPp's fixed media port 50000 between them
                drb_drops = lambda: range_drops(*MEDIA_PBX) + range_drops(*MEDIA_TEAMS)
                m0, k0 = media_metrics(lab.p["admin"]), drb_drops()
                rec = run_step(t, rate, secs, level_dir, watch=lambda: socket_drops(lab.p["pbx_media"]))
                time.sleep(1.0)
                m1, k1 = media_metrics(lab.p["admin"]), drb_drops()
                # drbridge's own account: what reached its sockets (read, or dropped by the kernel
                # because the socket's buffer was full) against what it sent on
                d = {k: m1.get(k, 0) - m0.get(k, 0) for k in m1}
                relay_in = d.get("received", 0) + (k1 - k0)
                rec["relay_received"] = d.get("received", 0)
                rec["relay_sent"] = d.get("sent", 0)
                rec["relay_kernel_drops"] = k1 - k0
                rec["relay_dropped"] = {k: v for k, v in d.items() if k.startswith("dropped_") and v}
                rec["relay_loss_pct"] = round(100.0 * (1 - rec["relay_sent"] / relay_in), 3) if relay_in else None
                echo0, echo1 = 0, (t.stop_level_uas(level_dir) or 0)
                sink0, sink1 = 0, (rec.get("watched") or 0)
                # every completed call played the whole pcap (236 packets) from the PBX side
                sent = rec["successful"] * (PCAP_PACKETS if args.media_player == "pcap" else TONE_PACKETS)
                echoed = echo1 - echo0
                rec["concurrent_target"] = n
                rec["concurrent_peak"] = sipp_peak(level_dir / "sipp_uac.out")
                rec["rtp_sent_pbx_side"] = sent
                rec["rtp_received_teams_side"] = echoed
                rec["rtp_loss_pct"] = round(100.0 * (1 - echoed / sent), 3) if sent else None
                # the echo comes back through drbridge to the PBX UAC's media socket, which SIPp does
                # not read: those kernel drops are expected and not counted as loss
                rec["udp_drops_pbx_uac_media_socket"] = sink1 - sink0
                rec["udp_rcvbuf_drops_other"] = rec["udp_rcvbuf_drops"] - (sink1 - sink0)
                steps.append(rec)
                log_step(t, rec, f" (media, {n} concurrent)")
                log(f"media {n} concurrent: RTP sent (PBX side) {sent}, received SRTP (Teams side) {echoed}, "
                    f"loss {rec['rtp_loss_pct']} %, other UDP drops {rec['udp_rcvbuf_drops_other']}")
                time.sleep(args.settle_s + 2)
        finally:
            t.stop()
    return {"status": "ran", "target": t.name, "label": t.label, "hold_s": hold, "steps": steps,
            "player": args.media_player, "rmem_default_raised_to": MEDIA_RMEM_DEFAULT if rmem.old is not None else None}


if __name__ == "__main__":
    main()
