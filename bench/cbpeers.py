"""Peers for the benchmarks: `humanline serve`, sipp phones and an RTP ear, all on 127.0.0.1,
and what their timings are read with (sipp message logs, the end of speech in a recording,
percentiles). Shared by bench/callback_crash.py, bench/callback_recovery.py,
bench/sip_route.py and bench/browser.py."""
import datetime, math, os, re, signal, socket, sqlite3, struct, subprocess, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("HUMANLINE_BIN", os.path.join(ROOT, "target/release/humanline"))
MODEL = os.environ.get("HUMANLINE_MODEL", os.path.join(ROOT, "models/ggml-tiny.en.bin"))
SIPP_DIR = os.path.join(ROOT, "tests/sipp")
HOST = "127.0.0.1"


def sipp_stamps(log, first_line_prefix, contains=None):
    """(time, message) of each message in a sipp -trace_msg log whose first line starts with
    `first_line_prefix` (and whose text holds `contains`)."""
    if not os.path.exists(log):
        return []
    out, ts, cur = [], None, None
    for line in open(log, errors="replace").read().splitlines():
        m = re.match(r"^-{10,} (\d{4}-\d\d-\d\d)\s+(\d\d:\d\d:\d\d\.\d+)", line)
        if m:
            if cur is not None:
                out.append(cur)
            cur = None
            ts = datetime.datetime.fromisoformat(f"{m.group(1)} {m.group(2)}").timestamp()
            continue
        if cur is None and ts is not None and line.strip() and not line.startswith(("UDP", "TCP")):
            if line.strip().startswith(first_line_prefix):
                cur = (ts, [line])
            ts = None
            continue
        if cur is not None:
            cur[1].append(line)
    if cur is not None:
        out.append(cur)
    return [(t, "\n".join(l)) for t, l in out if contains is None or contains in "\n".join(l)]


def header(msg, name):
    for line in msg.splitlines():
        k, _, v = line.strip().partition(":")
        if k.strip().lower() == name.lower():
            return v.strip()
    return None


class Sipp:
    """A sipp phone. `scenario` is a file under tests/sipp with @VAR@ placeholders."""

    def __init__(self, work, name, scenario, sip_port, vars=None, remote=None, calls=1,
                 timeout_s=None, literal=None):
        text = open(os.path.join(SIPP_DIR, scenario)).read()
        for k, v in (literal or {}).items():
            text = text.replace(k, str(v))
        for k, v in (vars or {}).items():
            text = text.replace(f"@{k}@", str(v))
        left = re.search(r"@[A-Z0-9_]+@", text)
        if left:
            raise SystemExit(f"{scenario}: unfilled placeholder {left.group(0)}")
        self.work, self.name = work, name
        path = os.path.join(work, f"{name}.xml")
        open(path, "w").write(text)
        self.msg = os.path.join(work, f"{name}.msg")
        args = ["sipp"] + ([remote] if remote else []) + [
            "-sf", path, "-t", "u1", "-i", HOST, "-p", str(sip_port), "-mp", str(sip_port + 2),
            "-cp", str(sip_port + 8), "-m", str(calls), "-nostdin", "-trace_msg",
            "-message_file", self.msg, "-trace_err", "-error_file",
            os.path.join(work, f"{name}.err")]
        if timeout_s:
            args += ["-timeout", f"{int(timeout_s)}s"]
        self.proc = subprocess.Popen(args, cwd=work, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(work, f"{name}.stderr"), "w"))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


class Server:
    """`humanline serve` with the embedded defaults (SQLite in `data`, bundled prompts)."""

    def __init__(self, work, n, sip_port, http_port, rtp, config=None, agents=(), data="data",
                 extra=(), log_filter="info", bin=None):
        self.log_path = os.path.join(work, f"humanline.{n}.log")
        self.data_dir = os.path.join(work, data)
        args = [bin or BIN, "serve", "--sip-listen", f"{HOST}:{sip_port}", "--http-listen",
                f"{HOST}:{http_port}", "--rtp-ports", rtp, "--data-dir", self.data_dir,
                "--prompts", os.path.join(ROOT, "prompts"), "--model", MODEL]
        if config:
            args += ["--config", config]
        for a in agents:
            args += ["--agent", a]
        args += list(extra)
        env = dict(os.environ, HUMANLINE_LOG=log_filter, NO_COLOR="1")
        self.spawned = time.time()
        self.proc = subprocess.Popen(args, cwd=work, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=open(self.log_path, "w"))

    def log(self):
        return open(self.log_path, errors="replace").read()

    def wait_ready(self, limit=60):
        deadline = time.time() + limit
        while time.time() < deadline:
            if "humanline: ready" in self.log():
                return time.time()
            if self.proc.poll() is not None:
                raise SystemExit(f"humanline serve exited:\n{self.log()[-3000:]}")
            time.sleep(0.02)
        raise SystemExit(f"humanline serve not ready in {limit} s:\n{self.log()[-3000:]}")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def ulaw_to_linear(b):
    u = ~b & 0xFF
    exp, mant = (u >> 4) & 7, u & 0x0F
    mag = (((mant << 3) + 0x84) << exp) - 0x84
    return (-mag if u & 0x80 else mag) / 32768.0


ULAW = [ulaw_to_linear(b) for b in range(256)]


class Ear:
    """The caller's end of the RTP stream: records when each packet from Humanline arrived
    and how loud it was; once it has heard Humanline it sends silence back every 20 ms, as a
    phone on a quiet line does."""

    def __init__(self, port, limit_s=60):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, port))
        self.sock.settimeout(0.005)
        self.heard, self.stopped, self.limit = [], False, limit_s
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        start, peer, seq, ts, nxt = time.time(), None, 1, 0, time.time()
        while not self.stopped and time.time() - start < self.limit:
            try:
                data, addr = self.sock.recvfrom(2048)
                if len(data) > 12 and data[0] >> 6 == 2 and data[1] & 0x7F == 0:
                    off = 12 + 4 * (data[0] & 0x0F)
                    pay = data[off:]
                    if pay:
                        rms = math.sqrt(sum(ULAW[b] ** 2 for b in pay) / len(pay))
                        self.heard.append((time.time(), rms))
                    peer = peer or addr
            except socket.timeout:
                pass
            except OSError:
                return
            if peer and time.time() >= nxt:
                nxt += 0.02
                pkt = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, ts & 0xFFFFFFFF, 0x1234) + \
                    b"\xff" * 160
                try:
                    self.sock.sendto(pkt, peer)
                except OSError:
                    pass
                seq, ts = seq + 1, ts + 160

    def loud_ms(self, t0, t1, threshold=0.01):
        return 20 * sum(1 for t, r in self.heard if t0 <= t < t1 and r > threshold)

    def stop(self):
        self.stopped = True
        self.thread.join()
        self.sock.close()


def ledger(work):
    """Every promise and its attempts, read straight from the SQLite file."""
    db = os.path.join(work, "data", "callbacks.db")
    if not os.path.exists(db):
        return [], []
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    c.row_factory = sqlite3.Row
    promises = [dict(r) for r in c.execute("SELECT * FROM callbacks ORDER BY id")]
    attempts = [dict(r) for r in c.execute("SELECT * FROM callback_attempts ORDER BY id")]
    c.close()
    return promises, attempts


def loadavg():
    try:
        return open("/proc/loadavg").read().split()[:3]
    except OSError:
        return None


def median(v):
    v = sorted(v)
    return v[len(v) // 2] if v else None


def pct(v, p):
    """The p-th percentile of `v` (nearest rank), None for no values."""
    v = sorted(v)
    return v[round(p / 100 * (len(v) - 1))] if v else None


def speech_end_ms(samples, rate):
    """End of the last 20 ms frame within 35 dB of the loudest: where speech ends in a
    recording (any sample scale)."""
    n = rate // 50
    rms = [math.sqrt(sum(s * s for s in samples[i:i + n]) / n) for i in range(0, len(samples) - n + 1, n)]
    peak = max(rms) if rms else 0
    if peak <= 0:
        return 0
    floor = peak * 10 ** (-35 / 20)
    return (max(i for i, r in enumerate(rms) if r >= floor) + 1) * 20


def wav_samples(path):
    """(samples, rate) of a 16-bit mono WAV."""
    data = open(path, "rb").read()
    rate = int.from_bytes(data[24:28], "little")
    pos = data.find(b"data") + 8
    return [int.from_bytes(data[i:i + 2], "little", signed=True) for i in range(pos, len(data) - 1, 2)], rate
