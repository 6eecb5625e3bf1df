"""Random LD/ST/SYS programs for the kernel tests, and the golden side of a kernel run.

A program is a chain of (LD, ST) pairs with random loop shapes, alignments, buffers, channel
fan-out, tile transposes and bindings; each ST waits for its LD and each LD for the previous
ST (it may reuse the buffer and read what the ST wrote), so every hardware interleaving must
give the golden simulator's bytes.
"""

from __future__ import annotations

import random

import numpy as np

from flightllm.contract.config import AcceleratorConfig
from flightllm.contract.isa import (
    BindKind, Binding, Buffer, Instruction, LengthReg, Opcode, SysOp, encode,
)
from flightllm.contract.regmap import axi_masters, channel_port
from flightllm.sim.golden import GoldenSimulator
from flightllm.sim.hbm import HBM

#: Bytes of each HBM channel image the tests use.
IMAGE_BYTES = 1 << 15


def random_transfer_program(cfg: AcceleratorConfig, rng: random.Random, pairs: int,
                            lengths: dict) -> list[Instruction]:
    """``pairs`` LD/ST pairs (with a BARRIER in the middle) that stay inside the images."""
    prog = []
    channels = cfg.hbm_channels_per_core
    for i in range(pairs):
        buf = rng.choice(list(Buffer))
        spec = cfg.buffer(buf.name.lower())
        transpose = rng.random() < 0.25
        length = 256 * rng.randint(1, 2) if transpose else rng.randint(1, 70)
        n1, n2 = rng.randint(1, 4), rng.randint(1, 3)
        nch = rng.randint(1, channels)
        # RBUF holds INT32: its byte addresses (and so the strides) are 4-byte aligned.
        al = (lambda x: -(-x // 4) * 4) if buf == Buffer.RBUF else (lambda x: x)
        ch_stride = al(length + rng.randint(0, 40))
        bs1 = al(nch * ch_stride + rng.randint(0, 30))
        bs2 = al(n1 * bs1 + rng.randint(0, 30))
        hs1 = length + rng.randint(0, 50)
        hs2 = n1 * hs1 + rng.randint(0, 50)
        span_b = (n2 - 1) * bs2 + (n1 - 1) * bs1 + (nch - 1) * ch_stride + length
        span_h = (n2 - 1) * hs2 + (n1 - 1) * hs1 + length
        # Bindings may grow the HBM offset by up to POS (OFFSET) or cut n1 to SEQ (COUNT).
        binds = []
        if rng.random() < 0.5:
            binds.append(Binding(BindKind.COUNT, LengthReg.SEQ, "n1", 0, 0))
        if rng.random() < 0.5:
            binds.append(Binding(BindKind.OFFSET, LengthReg.POS, "hbm_addr", 4, 1))
        slack_h = 16 * lengths["pos"] + 16
        buf_addr = al(rng.randrange(0, spec.bytes - span_b - 4))
        chan = rng.randrange(0, channels - nch + 1)
        hbm_addr = rng.randrange(0, IMAGE_BYTES - span_h - slack_h)
        wait_ld = (1 << Opcode.ST) if i else 0
        prog.append(Instruction(Opcode.LD, wait=wait_ld, release=1 << Opcode.ST, buf=buf,
                                buf_addr=buf_addr, chan=chan, hbm_addr=hbm_addr, len=length,
                                n1=n1, hbm_stride1=hs1, buf_stride1=bs1, n2=n2,
                                hbm_stride2=hs2, buf_stride2=bs2, nch=nch, ch_stride=ch_stride,
                                transpose=int(transpose), bindings=binds))
        # The store writes back a window of what was loaded, somewhere else in HBM.
        st_len = rng.randint(1, 90)
        st_n1, st_n2 = rng.randint(1, 3), rng.randint(1, 2)
        st_bs1, st_hs1 = al(st_len + rng.randint(0, 20)), st_len + rng.randint(0, 20)
        st_bs2, st_hs2 = al(st_n1 * st_bs1 + 7), st_n1 * st_hs1 + 9
        st_span_b = (st_n2 - 1) * st_bs2 + (st_n1 - 1) * st_bs1 + st_len
        st_span_h = (st_n2 - 1) * st_hs2 + (st_n1 - 1) * st_hs1 + st_len
        st_buf_addr = al(rng.randrange(max(0, buf_addr - 16),
                                       min(spec.bytes - st_span_b - 4, buf_addr + span_b) + 1))
        st_hbm = rng.randrange(0, IMAGE_BYTES - st_span_h)
        last = i == pairs - 1
        prog.append(Instruction(Opcode.ST, wait=1 << Opcode.LD,
                                release=0 if last else 1 << Opcode.LD, buf=buf,
                                buf_addr=st_buf_addr, chan=rng.randrange(channels),
                                hbm_addr=st_hbm, len=st_len, n1=st_n1, hbm_stride1=st_hs1,
                                buf_stride1=st_bs1, n2=st_n2, hbm_stride2=st_hs2,
                                buf_stride2=st_bs2))
        if i == pairs // 2:
            prog.append(Instruction(Opcode.SYS, sync_op=SysOp.BARRIER, sync_id=i))
    return prog


def words_of(prog: list[Instruction]) -> list[int]:
    return [w for ins in prog for w in encode(ins)]


def kernel_inputs(cfg: AcceleratorConfig, streams: list[list[int]], images: dict[str, bytes],
                  lengths: dict) -> tuple[dict, dict]:
    """``buffers`` and ``args`` for run_kernel: all streams in one program buffer."""
    program = b"".join(np.asarray(s, dtype="<u4").tobytes() for s in streams)
    buffers = {"instr": program, **images}
    args = {"instr": 0, **lengths}
    offset = 0
    for c, s in enumerate(streams):
        args[f"prog_offset_c{c}"] = offset
        args[f"prog_words_c{c}"] = len(s)
        offset += len(s)
    for m in axi_masters(cfg)[1:]:
        args[m.name] = 0
    return buffers, args


def golden_images(cfg: AcceleratorConfig, streams, images: dict[str, bytes],
                  lengths: dict) -> dict[str, bytes]:
    """The HBM images after the golden simulator ran the streams."""
    hbm = HBM(cfg.hbm_channels_total, cfg.hbm_channel_bytes)
    names = {}
    for core in range(cfg.cores):
        for ch in range(cfg.hbm_channels_per_core):
            phys = core * cfg.hbm_channels_per_core + ch
            names[phys] = channel_port(core, ch, cfg)
            hbm.write(phys, 0, images[names[phys]])
    GoldenSimulator(cfg, hbm).run(streams, **lengths)
    return {name: bytes(hbm.read(phys, 0, len(images[name]))) for phys, name in names.items()}
