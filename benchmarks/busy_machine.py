"""What the benchmarks need to measure a quiet and a busy machine in one run: a competing CPU-bound load they start
themselves, the machine's description (CPU model, cores, bfloat16 matrix units) and the load average around a run."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time

SPIN = "while True:\n    pass\n"


class CompetingLoad:
    """``processes`` Python processes spinning on one core each, for the "busy" column; stopped on exit.

    After starting them it waits ``settle`` seconds, longer than :class:`~mm_sbert.ThreadPolicy` reuses a measured
    load, so the library's next decision sees them.
    """

    def __init__(self, processes: int = 1, settle: float = 1.5) -> None:
        self.count = processes
        self.settle = settle
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> CompetingLoad:
        self.processes = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(self.count)]
        time.sleep(self.settle)
        return self

    def pause(self) -> None:
        """Stop the competing processes (SIGSTOP) and wait ``settle`` seconds: a quiet machine until :meth:`resume`,
        without the cost of starting them again."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let the paused processes spin again (SIGCONT) and wait ``settle`` seconds."""
        self._signal(signal.SIGCONT)

    def _signal(self, number: int) -> None:
        for process in self.processes:
            process.send_signal(number)
        time.sleep(self.settle)

    def cpu_seconds(self) -> float:
        """CPU seconds the competing processes have run so far (user + system, from ``/proc``; 0 elsewhere): over
        a stretch of wall time, the share of the machine they kept while the benchmark ran beside them."""
        ticks = 0
        for process in self.processes:
            try:
                with open(f"/proc/{process.pid}/stat", encoding="ascii") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
            except (OSError, IndexError, ValueError):
                return 0.0
        return ticks / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGCONT)  # a stopped process would not act on SIGTERM until continued
            process.terminate()
        for process in self.processes:
            process.wait(timeout=10)
        self.processes = []
        time.sleep(self.settle)


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine()} CPU"


def machine() -> dict:
    """CPU model, usable cores, whether it multiplies bfloat16 in hardware (AMX / AVX512-BF16), library versions."""
    import torch

    from mm_sbert.thread_policy import available_cores

    flags = cpu_flags()
    return {
        "cpu": cpu_name(),
        "cores": available_cores(),
        "amx_bf16": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def machine_line(info: dict) -> str:
    units = "AMX" if info["amx_bf16"] else ("AVX512-BF16" if info["avx512_bf16"] else "no bfloat16 units")
    return (
        f"{info['cpu']}, {info['cores']} cores, {units}, {info['memory_gib']} GiB; torch {info['torch']}, "
        f"Python {info['python']}"
    )


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def write_report(output: str | None, markdown: str, data: dict) -> None:
    """Print the markdown; with ``output`` also write it there and the data as JSON beside it (same name)."""
    print(markdown)
    if not output:
        return
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    with open(output, "w", encoding="utf-8") as f:
        f.write(markdown)
    with open(os.path.splitext(output)[0] + ".json", "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    print(f"Wrote {output} and {os.path.splitext(output)[0]}.json")


# The MobileNetV2 7x7 grid layout the benchmarks' cross-encoders read: 49 regions of 1280-d features.
REGION_DIM = 1280
GRID = 7


def region_images(count: int, seed: int = 0, grid: int = GRID) -> list:
    """``count`` images of ``grid x grid`` regions with random 1280-d features (MobileNetV2 grid layout: 7x7 is
    the featurizer's own map, 3x3 the pooled grid of the published Flickr8k recipe)."""
    import torch

    from mm_sbert import RegionFeatures

    generator = torch.Generator().manual_seed(seed)
    edges = torch.arange(grid + 1, dtype=torch.float32) / grid
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    boxes = torch.stack([edges[cols], edges[rows], edges[cols + 1], edges[rows + 1]], dim=1)
    return [
        RegionFeatures(torch.rand(grid * grid, REGION_DIM, generator=generator), boxes, image_size=(224, 224))
        for _ in range(count)
    ]


# ---------------------------------------------------------------------------------------------------- models
