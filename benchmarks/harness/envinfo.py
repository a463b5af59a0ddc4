"""Facts about the machine and the software a result was measured with.

The CPU name, commit and package versions need neither torch nor dbl_kernels (cpu_target.py
and the report use them); the device functions import torch when called.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent


def package_version(name):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def triton_version():
    return package_version("triton")


def cpu_name():
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def git_commit():
    with contextlib.suppress(Exception):
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                             text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip()
    return None


def today():
    return datetime.date.today().isoformat()


def device_name(device):
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({os.cpu_count()} cpus)"


def short_name(device):
    """Folder-name form of the device: 'h100-80gb-hbm3', 'cpu-amd-epyc'."""
    if device.type == "cuda":
        import torch

        name = torch.cuda.get_device_name(device)
    else:
        name = "cpu " + cpu_name()
    name = re.sub(r"\b(nvidia|geforce|processor|\d+-core)\b", " ", name.lower())
    name = re.sub(r"\(r\)|\(tm\)|@.*$", " ", name)
    return "-".join(re.findall(r"[a-z0-9]+", name))[:40] or device.type


def default_out(device, cwd=None):
    """Where a run writes when --out is not given: ./dbl_bench/<date>-<device>, under the current
    directory and ignored by git, so a run never overwrites the committed results."""
    return Path(cwd or os.getcwd()) / "dbl_bench" / f"{today()}-{short_name(device)}"


def cache_bytes(device):
    """Last-level cache size: input sets are rotated (and, on the CPU, the cache flushed) so a
    small shape is not timed out of a cache it would not sit in during training."""
    if device.type == "cuda":
        import torch

        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20) or (50 << 20))
    with contextlib.suppress(OSError, ValueError):
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
        scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1], 1)
        return int(text.rstrip("KM")) * scale
    return 32 << 20


def auto_backend(device):
    """Which concrete backend ``backend="auto"`` runs on this device."""
    try:
        from dbl_kernels import backends

        return backends.resolve("auto", device.type)
    except Exception as exc:  # the resolver is internal; a report should not die of it
        return f"unknown ({exc})"


def fused_backends(device):
    """The fused backends worth timing on device: "triton" on the CPU is the interpreter, "cuda"
    needs a GPU, "cpu" does not take CUDA tensors; "reference" is measured as "eager"."""
    import dbl_kernels

    names = [n for n in dbl_kernels.available_backends() if n != "reference"]
    if device.type == "cpu":
        return [n for n in names if n == "cpu"]
    return [n for n in names if n != "cpu"]


def collect_meta(device, args):
    import torch

    import dbl_kernels

    return dict(
        device=device.type, device_name=device_name(device), short_name=short_name(device),
        torch=torch.__version__, triton=triton_version(), cuda=torch.version.cuda,
        python=platform.python_version(), dbl_kernels=getattr(dbl_kernels, "__version__", None),
        git=git_commit(), date=today(), cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(), available_backends=dbl_kernels.available_backends(),
        auto_backend=auto_backend(device), copy_gbytes_per_s=None, suites=args.suite,
        losses=getattr(args, "losses", None), compile_shapes=args.compile_shapes, static_from=args.static_from,
        cache_bytes=cache_bytes(device),
        cpu_load=load_average())


def load_average():
    """1-minute load average at the start of a run: on a shared machine it says how much the
    timings were contended."""
    with contextlib.suppress(OSError, AttributeError):
        return round(os.getloadavg()[0], 2)
    return None
