"""How a call is timed. Three figures per call, each answering a different question:

* user-visible (``median_ms``): what a training loop sees. CUDA: rounds of back-to-back calls
  between two CUDA events, so a call that keeps the GPU waiting on the host is charged for it.
  CPU: a wall clock around each call, the last-level cache flushed first where the inputs fit.
* host (``host_us``): the host wall time of one call: back-to-back calls, the clock read when
  the last one returns, one sync per round. On the CPU this is the wall time per call with
  warm caches.
* device (``device_us``, CUDA only): ``step`` captured K times into a CUDA graph, the graph
  replayed between two CUDA events, divided by K: the GPU's time with no host in the way.

No L2 flush on the GPU: in a loop or a graph it would be timed with the call. Input sets rotate
instead; the largest shapes are many times the L2 and small ones are L2-resident, as the logits a
classifier layer has just written would be.
"""
from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time

import torch

from .envinfo import cache_bytes

# A CUDA graph holds this much work per replay: long enough for the events' resolution, short
# enough that capture (host time per call) stays cheap.
GRAPH_TARGET_MS = 10.0
GRAPH_CALLS = (2, 64)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def percentiles(times):
    """(median, p20, p80) of a list of numbers."""
    ordered = sorted(times)
    if len(ordered) == 1:
        return ordered[0], ordered[0], ordered[0]
    q = statistics.quantiles(ordered, n=10, method="inclusive")
    return statistics.median(ordered), q[1], q[7]


class Timer:
    """Times a ``step(i)`` (one call on input set i) on one device; see the module docstring."""

    def __init__(self, device, min_time, min_reps, max_reps, warmup=2):
        self.device = device
        self.min_time = min_time
        self.min_reps = min_reps
        self.max_reps = max_reps
        self.warmup = warmup
        self.cache = cache_bytes(device)
        self._flush_buf = None

    def _flush(self):
        if self._flush_buf is None:
            self._flush_buf = torch.empty(2 * self.cache, dtype=torch.uint8, device=self.device)
        self._flush_buf.fill_(1)

    def _reps(self, per_call_s):
        wanted = math.ceil(self.min_time / max(per_call_s, 1e-7))
        return int(min(self.max_reps, max(self.min_reps, wanted)))

    def _warm(self, step, n_sets):
        """Warm-up calls, then one more timed with a sync: the estimate of one call in seconds."""
        for i in range(self.warmup):
            step(i % n_sets)
        sync(self.device)
        t0 = time.perf_counter()
        out = step(0)
        sync(self.device)
        del out
        return time.perf_counter() - t0

    def __call__(self, step, n_sets, set_bytes, flush=True):
        """Times of single calls in ms. CPU: wall clock around each call; CUDA: events around
        each. The cache is flushed before each call only where the rotated inputs would sit in it."""
        return self._per_call(step, n_sets, set_bytes, self._reps(self._warm(step, n_sets)), flush)

    def _per_call(self, step, n_sets, set_bytes, reps, flush=True):
        flush = flush and n_sets * set_bytes < 2 * self.cache
        if self.device.type == "cuda":
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(reps)]
            for r, (start, end) in enumerate(events):
                if flush:
                    self._flush()
                start.record()
                out = step(r % n_sets)
                end.record()
                del out
            torch.cuda.synchronize(self.device)
            return [start.elapsed_time(end) for start, end in events]
        times = []
        for r in range(reps):
            if flush:
                self._flush()
            start = time.perf_counter()
            out = step(r % n_sets)
            times.append((time.perf_counter() - start) * 1e3)
            del out
        return times

    def loop(self, step, n_sets, reps, rounds):
        """``rounds`` rounds of ``reps`` back-to-back calls: ([user-visible ms per call],
        [host µs per call]) per round. The user-visible time is the CUDA events' (the wall time
        with the final sync on the CPU); the host time stops when the last call returns."""
        cuda = self.device.type == "cuda"
        user, host = [], []
        for _ in range(rounds):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            t0 = time.perf_counter()
            for r in range(reps):
                out = step(r % n_sets)
            t1 = time.perf_counter()
            if cuda:
                end.record()
            del out
            sync(self.device)
            host.append((t1 - t0) / reps * 1e6)
            user.append(start.elapsed_time(end) / reps if cuda else (t1 - t0) / reps * 1e3)
        return user, host

    def graph(self, step, n_sets, per_call_ms, clear=None):
        """Device µs per call from CUDA-graph replay: (µs or None, calls captured, how). Never
        raises: a step that cannot be captured (a host sync, a CPU tensor) is reported as such and
        the caller falls back to the user-visible time."""
        if self.device.type != "cuda" or not torch.cuda.is_available():
            return None, None, "no CUDA graph: not a CUDA device"
        lo, hi = GRAPH_CALLS
        calls = int(min(hi, max(lo, math.ceil(GRAPH_TARGET_MS / max(per_call_ms, 1e-3)))))
        cuda_graph = None
        try:
            # Warm-up on a side stream, as capture requires (lazy handles, autotuning, allocator).
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for i in range(3):
                    step(i % n_sets)
            torch.cuda.current_stream(self.device).wait_stream(side)
            sync(self.device)
            cuda_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(cuda_graph):
                for i in range(calls):
                    step(i % n_sets)
            cuda_graph.replay()
            sync(self.device)
            times = []
            for _ in range(max(self.min_reps, 5)):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                cuda_graph.replay()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            return statistics.median(times) / calls * 1e3, calls, f"cuda graph, {calls} calls per replay"
        except Exception as exc:
            with contextlib.suppress(Exception):
                sync(self.device)
            first = str(exc).splitlines()[0][:160] if str(exc) else ""
            return None, calls, f"capture failed: {type(exc).__name__}: {first}"
        finally:
            del cuda_graph  # its memory pool goes once the gradients captured into it go too
            if clear is not None:
                clear()  # gradients that live in the graph's memory pool
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()

    def measure(self, step, n_sets, set_bytes, device_time=True, clear=None):
        """The three figures for one step: a dict of median_ms, p20_ms, p80_ms, reps, host_us,
        device_us, device_timing."""
        reps = self._reps(self._warm(step, n_sets))
        if self.device.type == "cuda":
            rounds = min(reps, 10)
            user, host = self.loop(step, n_sets, max(1, reps // rounds), rounds)
            timed = rounds * max(1, reps // rounds)
        else:
            user = self._per_call(step, n_sets, set_bytes, reps)
            timed = len(user)
            per_call = statistics.median(user)
            calls = max(1, min(self.max_reps, math.ceil(self.min_time / 2 / max(per_call * 1e-3, 1e-7))))
            _, host = self.loop(step, n_sets, max(1, calls // 5), 5)
        median, p20, p80 = percentiles(user)
        result = dict(median_ms=median, p20_ms=p20, p80_ms=p80, reps=timed, host_us=statistics.median(host),
                      device_us=None, device_timing=None)
        if device_time and self.device.type == "cuda":
            result["device_us"], _, result["device_timing"] = self.graph(step, n_sets, median, clear)
        return result


def interleaved(steps, rounds, calls):
    """{name: [µs per call, one per round]}: each round runs every step ``calls`` times back to
    back, in an order that rotates from round to round, so a change in machine load hits all of
    them alike. CPU only (no sync)."""
    names = list(steps)
    times = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            step = steps[name]
            t0 = time.perf_counter()
            for _ in range(calls):
                step()
            times[name].append((time.perf_counter() - t0) / calls * 1e6)
    return times


def copy_bandwidth(device):
    """Device copy bandwidth in GB/s (bytes read + bytes written), median of many copies."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        nbytes = int(min(1 << 30, free // 4))
    else:
        nbytes = 256 << 20
    src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    timer = Timer(device, min_time=0.2, min_reps=10, max_reps=50)
    times = timer(lambda _: dst.copy_(src), 1, 2 * nbytes, flush=False)  # far larger than any cache
    return 2 * nbytes / (statistics.median(times) * 1e-3) / 1e9


@contextlib.contextmanager
def _quiet_stderr():
    """Kineto prints a line to fd 2 at every profiler start and stop."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory(step, device):
    """Peak bytes allocated during one call beyond what was allocated before it (the inputs),
    the outputs and gradient included. CPU: from the profiler's allocation events; None if
    they are not available."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = step(0)
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del out
        return int(peak)
    try:
        from torch.profiler import ProfilerActivity, profile

        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = step(0)
            del out
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        events.sort(key=lambda e: e.start_ns())
        current = peak = 0
        for e in events:
            current += e.nbytes()
            peak = max(peak, current)
        return int(peak) if events else None
    except Exception:
        return None
