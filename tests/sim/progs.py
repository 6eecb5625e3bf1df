"""Small helpers to write test programs by hand: staging data and chaining tokens."""

import numpy as np

from flightllm.contract.isa import Buffer, Instruction, Opcode

Q = Opcode


def bit(*queues) -> int:
    return sum(1 << q for q in queues)


def load(buf, buf_addr, nbytes, *, chan=0, hbm_addr=0, **kw) -> Instruction:
    """A one-shot LD of nbytes."""
    return Instruction(Opcode.LD, buf=buf, buf_addr=buf_addr, chan=chan, hbm_addr=hbm_addr,
                       len=nbytes, n1=1, n2=1, **kw)


def store(buf, buf_addr, nbytes, *, chan=0, hbm_addr=0, **kw) -> Instruction:
    return Instruction(Opcode.ST, buf=buf, buf_addr=buf_addr, chan=chan, hbm_addr=hbm_addr,
                       len=nbytes, n1=1, n2=1, **kw)


def stage(sim, core_buffers, items):
    """Write bytes straight into on-chip buffers (setup that a test does not need to LD)."""
    for buf, addr, data in items:
        arr = np.frombuffer(bytes(data), dtype=np.uint8)
        core_buffers.mem[buf][addr:addr + len(arr)] = arr


def i8(values) -> bytes:
    return np.asarray(values, dtype=np.int64).astype(np.int8).tobytes()


def i32(values) -> bytes:
    return np.asarray(values, dtype=np.int64).astype("<i4").tobytes()


def read_i8(core_buffers, addr, shape):
    n = int(np.prod(shape))
    raw = core_buffers.mem[Buffer.ABUF][addr:addr + n]
    return raw.view(np.int8).astype(np.int64).reshape(shape)


def read_i32(core_buffers, addr, shape):
    n = int(np.prod(shape))
    raw = core_buffers.mem[Buffer.RBUF][addr:addr + 4 * n]
    return raw.view("<i4").astype(np.int64).reshape(shape)
