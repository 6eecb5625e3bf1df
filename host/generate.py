"""Text generation on a session: tokenizer, sampling, streaming and stop conditions.

The prompt is prefilled in one or more chunks, then each new token is decoded with the KV cache
the device keeps in HBM. Tokens are yielded as they come. Generation stops at the first of:
``max_new_tokens`` tokens, the end-of-sequence id, or the build's ``max_len`` (the longest
sequence its programs and KV cache serve).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .build import Build, BuildError
from .session import Session

__all__ = ["Sampler", "Tokenizer", "TokenizerError", "GeneratedToken", "Generation",
           "find_tokenizer", "find_eos_id"]

#: The file a Hugging Face model directory keeps its tokenizer in.
TOKENIZER_FILE = "tokenizer.json"


class TokenizerError(ValueError):
    """No usable tokenizer for a text prompt, or the tokenizer cannot be loaded."""


@dataclass(frozen=True)
class Sampler:
    """How the next token is chosen from a logits row.

    Greedy (the largest logit, lowest id on ties) unless one of ``top_k``, ``top_p`` or
    ``temperature`` is given; then the logits are divided by the temperature (default 1),
    cut to the ``top_k`` largest, turned into probabilities, cut to the smallest set whose
    probability reaches ``top_p``, and sampled with a generator seeded by ``seed``. A
    temperature of 0 is greedy.
    """

    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    seed: int = 0

    def __post_init__(self):
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k = {self.top_k}: keep at least one token")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p = {self.top_p}: must be in (0, 1]")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature = {self.temperature} is negative")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or (self.top_k is None and self.top_p is None
                                         and self.temperature is None)

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)

    def choose(self, logits: np.ndarray, rng: np.random.Generator) -> int:
        """The next token from one row of logits."""
        logits = np.asarray(logits, dtype=np.float64)
        if self.greedy:
            return int(np.argmax(logits))
        z = logits / (self.temperature or 1.0)
        order = np.argsort(-z, kind="stable")  # best first; ties keep the lower id first
        if self.top_k is not None:
            order = order[:self.top_k]
        p = np.exp(z[order] - z[order[0]])
        p /= p.sum()
        if self.top_p is not None:
            # Keep the best tokens up to and including the one that reaches top_p.
            keep = int(np.searchsorted(np.cumsum(p), self.top_p - 1e-12)) + 1
            order, p = order[:keep], p[:keep] / p[:keep].sum()
        return int(order[rng.choice(len(order), p=p)])


class Tokenizer:
    """A Hugging Face ``tokenizer.json`` through the ``tokenizers`` package."""

    def __init__(self, path: Path):
        try:
            from tokenizers import Tokenizer as HfTokenizer
        except ImportError:
            raise TokenizerError(f"{path} needs the 'tokenizers' package (pip install "
                                 "tokenizers); or give the prompt as --prompt-ids") from None
        self.path = path
        try:
            self._tok = HfTokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises a bare Exception on a bad file
            raise TokenizerError(f"{path}: cannot load the tokenizer: {exc}") from None

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text).ids)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def streamer(self) -> "_TextStream":
        return _TextStream(self)


class _TextStream:
    """Text pieces for tokens as they arrive: decodes the whole sequence and emits what is new
    (tokens are not always text on their own: spaces and merges depend on neighbours), holding
    back while the text ends in an incomplete character (a UTF-8 sequence split by tokens)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer, self.ids, self.shown = tokenizer, [], 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece, self.shown = text[self.shown:], len(text)
        return piece


def _model_dirs(build: Build) -> list[Path]:
    """Where a build's tokenizer may be: the build itself, then the model it came from."""
    dirs = [build.path]
    source = build.manifest.get("model", {}).get("source")
    if source and Path(source).exists():  # a preset's source is a name, not a path
        src = Path(source)
        dirs.append(src if src.is_dir() else src.parent)
    return dirs


def find_tokenizer(build: Build, explicit: Path | None = None) -> Tokenizer | None:
    """The tokenizer given, else the ``tokenizer.json`` of the build or its model's directory;
    None when there is none."""
    if explicit is not None:
        path = explicit / TOKENIZER_FILE if explicit.is_dir() else explicit
        if not path.is_file():
            raise TokenizerError(f"{explicit}: no tokenizer file there")
        return Tokenizer(path)
    for d in _model_dirs(build):
        if (d / TOKENIZER_FILE).is_file():
            return Tokenizer(d / TOKENIZER_FILE)
    return None


def find_eos_id(build: Build, tokenizer: Tokenizer | None) -> int | None:
    """The end-of-sequence id from the model directory's generation_config.json or
    config.json (the first one, if it is a list); None if neither names one."""
    dirs = _model_dirs(build)
    if tokenizer is not None:
        dirs.insert(0, tokenizer.path.parent)
    for d in dirs:
        for name in ("generation_config.json", "config.json"):
            path = d / name
            if path.is_file():
                try:
                    eos = json.loads(path.read_text()).get("eos_token_id")
                except (json.JSONDecodeError, AttributeError):
                    continue
                if isinstance(eos, list):
                    eos = eos[0] if eos else None
                if isinstance(eos, int):
                    return eos
    return None


@dataclass
class GeneratedToken:
    """One generated token: its id, the text it adds ('' without a tokenizer), and the host's
    wall time for the kernel run(s) and read-back that produced it."""

    index: int
    token: int
    text: str
    seconds: float


@dataclass
class Generation:
    """Prefill a prompt and decode new tokens; iterate to get them as they come.

    Args:
        session: a fresh session (position 0).
        prompt: the prompt's token ids.
        max_new_tokens: stop after this many new tokens.
        sampler: how each token is chosen (greedy by default).
        eos_id: stop after this token (it is the last one yielded).
        tokenizer: for the text of each token.

    After iteration, ``stop_reason`` is ``"max_new_tokens"``, ``"eos"`` or ``"max_len"``,
    ``tokens`` the new ids and ``prefill_seconds`` the prompt's time.
    """

    session: Session
    prompt: list[int]
    max_new_tokens: int
    sampler: Sampler = field(default_factory=Sampler)
    eos_id: int | None = None
    tokenizer: Tokenizer | None = None
    tokens: list[int] = field(default_factory=list)
    stop_reason: str | None = None
    prefill_seconds: float = 0.0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens = {self.max_new_tokens}: generate at least one")
        if not self.prompt:
            raise BuildError("the prompt is empty")
        if len(self.prompt) > self.session.build.max_len:
            raise BuildError(f"the prompt has {len(self.prompt)} tokens; the build serves "
                             f"sequences up to max_len {self.session.build.max_len}")

    def __iter__(self):
        session, max_len = self.session, self.session.build.max_len
        rng = self.sampler.rng()
        stream = self.tokenizer.streamer() if self.tokenizer is not None else None
        t0 = time.perf_counter()
        row = session.prefill(self.prompt).logits[-1]
        self.prefill_seconds = seconds = time.perf_counter() - t0
        while True:
            token = self.sampler.choose(row, rng)
            self.tokens.append(token)
            yield GeneratedToken(len(self.tokens) - 1, token,
                                 stream.push(token) if stream else "", seconds)
            if self.eos_id is not None and token == self.eos_id:
                self.stop_reason = "eos"
                return
            if len(self.tokens) >= self.max_new_tokens:
                self.stop_reason = "max_new_tokens"
                return
            if session.position >= max_len:  # decoding this token needs one more KV slot
                self.stop_reason = "max_len"
                return
            t0 = time.perf_counter()
            row = session.decode(token).logits[0]
            seconds = time.perf_counter() - t0
