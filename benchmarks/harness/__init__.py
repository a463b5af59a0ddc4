"""The benchmark harness behind the scripts in ``benchmarks/``.

    cases    what is measured: shapes, dtypes, suites, bytes moved, the record fields (no torch)
    envinfo  facts about the machine and the software: versions, device names, commit, caches
    timing   how a call is timed: user-visible, host and device (CUDA graph) time, bandwidth, memory
    measure  the functions under test and the run that fills the records
    report   results.json / csv / summary.md / plot, and the tables (imports neither torch nor
             dbl_kernels, so rendering committed results needs neither)

Nothing here imports torch at package import time.
"""
import sys
from pathlib import Path

# A checkout without the package installed: dbl_kernels from the repository root. Appended, so an
# installed package earlier on the path still wins; nothing is imported here.
_ROOT = Path(__file__).resolve().parents[2]
if (_ROOT / "dbl_kernels").is_dir() and str(_ROOT) not in sys.path:
    sys.path.append(str(_ROOT))
