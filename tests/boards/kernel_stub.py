"""A port-only stand-in for the kernel top, for these tests only (never shipped): the same
port list the register map implies, no logic. Tests that need the real kernel use
``flightllm.hw.kernel.kernel_verilog`` and skip when it does not exist yet."""

from __future__ import annotations

from flightllm.boards.project import kernel_ports
from flightllm.contract.regmap import register_map


def stub_verilog(cfg, name: str = "flightllm", *, drop: str | None = None) -> str:
    """Verilog of an empty module with the kernel's ports (``drop``: leave one port out)."""
    decls = []
    for port, (direction, width) in kernel_ports(cfg).items():
        if port == drop:
            continue
        if width is None:                   # the control address: what the map decodes
            width = register_map(cfg).address_bits
        outputs = "" if direction == "input" else f"\n  assign {port} = {width}'d0;"
        decls.append((f"  {direction} wire {'' if width == 1 else f'[{width - 1}:0] '}{port}",
                      outputs))
    ports = ",\n".join(d for d, _ in decls)
    body = "".join(a for _, a in decls)
    return f"module {name} (\n{ports}\n);{body}\nendmodule\n"


def real_kernel_verilog(cfg, name: str = "flightllm") -> str | None:
    """The real kernel top's Verilog, or None while flightllm.hw.kernel does not exist."""
    try:
        from flightllm.hw.kernel import kernel_verilog
    except ImportError:
        return None
    return kernel_verilog(cfg, name=name)
