"""A compiled build directory, loaded and checked for the host.

The manifest is the contract between the compiler and every device: programs, per-channel
HBM images, the I/O layout and the scales the host needs to embed tokens and read logits.
Loading verifies the format, the ISA hash and every file's checksum, so a truncated or edited
build is refused with the file named, before anything runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flightllm.contract.config import AcceleratorConfig
from flightllm.contract.isa import isa_hash

__all__ = ["Build", "BuildError", "load_build"]


class BuildError(ValueError):
    """A build directory is missing, incomplete, corrupted or for another ISA."""


@dataclass
class Build:
    """A loaded build: its directory, manifest and configuration."""

    path: Path
    manifest: dict
    config: AcceleratorConfig

    def file(self, name: str) -> bytes:
        return (self.path / name).read_bytes()

    def program(self, phase: str) -> bytes:
        for entry in self.manifest["programs"]:
            if entry["phase"] == phase:
                return self.file(entry["file"])
        raise BuildError(f"{self.path}: no {phase} program in the manifest")

    @property
    def io(self) -> dict:
        return self.manifest["io"]

    @property
    def max_len(self) -> int:
        return self.manifest["model"]["max_len"]

    def embed(self, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """INT32 residual rows for ``tokens`` at ``positions`` (the host's embedding step)."""
        io = self.io
        vocab = io["vocab_size"]
        bad = [int(t) for t in np.asarray(tokens).ravel() if not 0 <= t < vocab]
        if bad:
            raise BuildError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
        # Memory-mapped: a step reads only its rows, not the whole table (113 MB for SmolLM2).
        x = np.load(self.path / io["embed"], mmap_mode="r")[tokens].astype(np.float64)
        if io["pos_embed"]:
            table = np.load(self.path / io["pos_embed"], mmap_mode="r")
            x = x + table[positions + io["position_offset"]]
        lim = (1 << 23) - 1
        return np.clip(np.round(x / io["residual_scale"]), -lim, lim).astype(np.int64)


def load_build(path: str | Path) -> Build:
    """Load and verify a build directory."""
    path = Path(path)
    mpath = path / "manifest.json"
    if not mpath.is_file():
        raise BuildError(f"{path}: not a build directory (no manifest.json)")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise BuildError(f"{mpath}: not valid JSON: {exc}") from None
    if manifest.get("format") != "flightllm-build":
        raise BuildError(f"{mpath}: not a flightllm build manifest")
    if manifest["isa"]["hash"] != isa_hash():
        raise BuildError(f"{path}: built for ISA {manifest['isa']['hash']}; this flightllm "
                         f"speaks {isa_hash()}: recompile")
    config = AcceleratorConfig.from_dict(manifest["config"], source=f"{mpath} config")
    if config.config_hash() != manifest["config_hash"]:
        raise BuildError(f"{mpath}: configuration hash does not match its fields")
    for entry in manifest["programs"] + manifest["hbm"]:
        fpath = path / entry["file"]
        if not fpath.is_file():
            raise BuildError(f"{path}: {entry['file']} is missing")
        if hashlib.sha256(fpath.read_bytes()).hexdigest() != entry["sha256"]:
            raise BuildError(f"{path}: {entry['file']} does not match its checksum")
    return Build(path, manifest, config)
