"""``flightllm perplexity``: how well a compiled build predicts real text.

The text is tokenised with the model's own tokenizer (a Hugging Face ``tokenizer.json``, read
with the ``tokenizers`` package), and scored with sliding windows: a window of ``window``
tokens starts every ``stride`` tokens (at most ``window - 1``, so that a window always holds
the context of its first target); each window runs from position 0 (a fresh sequence) and
scores only the targets that no earlier window scored, so every token after the first is
predicted exactly once, with between ``window - stride`` and ``window - 1`` tokens of context.
The perplexity is ``exp`` of the mean negative log-likelihood over those targets.

The same windows and targets are scored three ways, so the numbers compare like with like:

* :func:`build_perplexity`: the build on the golden simulator (``host/session.py``: the prefill
  program, in chunks of the build's prefill size), the figure the accelerator would give;
* :func:`float_perplexity`: the source ONNX model on onnxruntime in float32;
* :func:`qmodel_perplexity`: ``qmodel.qforward``, the integer reference the programs reproduce
  bit for bit (the tests check the first equals the third).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import click
import numpy as np

from .layout import CompileError

__all__ = ["Window", "sliding_windows", "token_nll", "load_tokenizer", "tokenize_file",
           "build_perplexity", "float_perplexity", "qmodel_perplexity", "perplexity_command",
           "source_model"]


@dataclass(frozen=True)
class Window:
    """Tokens ``[start, end)`` run as one sequence; targets ``[score_from, end)`` scored
    (``start < score_from``: each target's prediction is a row of this window's logits)."""

    start: int
    end: int
    score_from: int


def sliding_windows(n_tokens: int, window: int, stride: int) -> list[Window]:
    """The windows that score every token of ``n_tokens`` but the first, once each."""
    if window < 2:
        raise CompileError(f"window {window}: needs at least 2 tokens (a context and a target)")
    if not 1 <= stride <= window:
        raise CompileError(f"stride {stride}: must lie in 1..window ({window})")
    if n_tokens < 2:
        raise CompileError(f"the text has {n_tokens} token(s); perplexity needs at least 2")
    out, scored = [], 1  # token 0 has no context: never a target
    start = 0
    while scored < n_tokens:
        end = min(start + window, n_tokens)
        out.append(Window(start, end, scored))
        scored = end
        # The next window must hold the token before its first target (its context); with
        # stride == window that makes consecutive windows share one token.
        start = min(start + stride, end - 1)
    return out


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of each target under its row of logits (float64 log-softmax)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logz = np.log(np.exp(z).sum(axis=1))
    return logz - z[np.arange(len(targets)), targets]


def _score(windows: list[Window], tokens: np.ndarray,
           run: Callable[[np.ndarray], np.ndarray], progress=None) -> dict:
    """Run every window through ``run`` (tokens -> logits per token) and collect the NLL."""
    nll = []
    t0 = time.perf_counter()
    for i, w in enumerate(windows):
        logits = run(tokens[w.start:w.end])
        rows = np.arange(w.score_from - 1, w.end - 1) - w.start  # row j predicts token j + 1
        nll.append(token_nll(logits[rows], tokens[w.score_from:w.end]))
        if progress is not None:
            progress(i + 1, len(windows), time.perf_counter() - t0)
    nll = np.concatenate(nll)
    return {"perplexity": float(math.exp(nll.mean())), "nll": float(nll.mean()),
            "tokens": int(nll.size), "seconds": round(time.perf_counter() - t0, 3)}


def build_perplexity(build, tokens, window: int, stride: int, progress=None) -> dict:
    """Perplexity of a build (a :class:`~flightllm.host.build.Build`) on the golden simulator.

    One session on one device serves every window, each restarted at position 0: the programs
    read the KV cache only up to the current length, so what an earlier window left in HBM is
    never used (the tests check the result against ``qforward`` from an empty cache).
    """
    from flightllm.host.session import GoldenDevice, Session

    if window > build.max_len:
        raise CompileError(f"window {window} exceeds the build's max_len {build.max_len}")
    vocab = build.io["vocab_size"]
    tokens = _check_tokens(tokens, vocab)
    session = Session(build, GoldenDevice(build))

    def run(ids):
        session.position = 0
        return session.prefill(ids).logits

    return _score(sliding_windows(len(tokens), window, stride), tokens, run, progress)


def qmodel_perplexity(qm, tokens, window: int, stride: int) -> dict:
    """Perplexity from ``qforward`` (the integer reference) on the same windows."""
    from .qmodel import KVState, qforward

    tokens = _check_tokens(tokens, qm.config.vocab_size)
    return _score(sliding_windows(len(tokens), window, stride), tokens,
                  lambda ids: qforward(qm, ids, 0, KVState.empty(qm)) * qm.lm_head.s_out)


def float_perplexity(onnx_path: str | Path, tokens, window: int, stride: int) -> dict:
    """Perplexity of the float ONNX model on onnxruntime (CPU), on the same windows."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    tokens = _check_tokens(tokens, None)

    def run(ids):
        feed = {"input_ids": ids[None, :].astype(np.int64)}
        if "attention_mask" in names:
            feed["attention_mask"] = np.ones_like(feed["input_ids"])
        return sess.run(None, feed)[0][0]

    return _score(sliding_windows(len(tokens), window, stride), tokens, run)


def _check_tokens(tokens, vocab: int | None) -> np.ndarray:
    tokens = np.asarray(tokens, dtype=np.int64).ravel()
    if vocab is not None and tokens.size and (tokens.min() < 0 or tokens.max() >= vocab):
        bad = int(tokens[(tokens < 0) | (tokens >= vocab)][0])
        raise CompileError(f"token id {bad} is outside the model's vocabulary (0..{vocab - 1})")
    return tokens


# --------------------------------------------------------------------------- text
def load_tokenizer(path: str | Path):
    """A ``tokenizers.Tokenizer`` from a ``tokenizer.json`` file."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise CompileError("tokenising text needs the 'tokenizers' package "
                           "(pip install tokenizers), or pass --token-ids") from None
    path = Path(path)
    if not path.is_file():
        raise CompileError(f"{path}: no such tokenizer file")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own exception types
        raise CompileError(f"{path}: not a tokenizer.json ({exc})") from None


def tokenize_file(text_path: str | Path, tokenizer, max_tokens: int | None = None) -> np.ndarray:
    """The token ids of a text file's lines, joined with newlines, cut to ``max_tokens``."""
    path = Path(text_path)
    if not path.is_file():
        raise CompileError(f"{path}: no such text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CompileError(f"{path}: not UTF-8 text ({exc})") from None
    ids = _encode_lines(tokenizer, text.splitlines(), max_tokens)
    if len(ids) < 2:
        raise CompileError(f"{path}: {len(ids)} token(s); perplexity needs at least 2")
    return ids


def _encode_lines(tokenizer, lines: Iterable[str], max_tokens: int | None) -> np.ndarray:
    # Line by line (a 360 kB file at once is slow to encode and we rarely need all of it).
    ids: list[int] = []
    for line in lines:
        if max_tokens is not None and len(ids) >= max_tokens:
            break
        if line.strip():
            ids += tokenizer.encode(line.strip() + "\n", add_special_tokens=False).ids
    return np.asarray(ids[:max_tokens] if max_tokens is not None else ids, dtype=np.int64)


def source_model(build) -> Path | None:
    """The ONNX file the build was compiled from, if the manifest names one that exists
    (``model.source_path`` when the compiler records it, else ``model.source``, which is the
    path as given to ``flightllm compile``: relative paths resolve from the current
    directory)."""
    model = build.manifest.get("model", {})
    for src in (model.get("source_path"), model.get("source")):
        if src and Path(src).suffix == ".onnx" and Path(src).is_file():
            return Path(src)
    return None


# --------------------------------------------------------------------------- CLI
@click.command("perplexity")
@click.argument("build_dir", metavar="BUILD", type=click.Path(path_type=Path))
@click.option("--text", "text", type=click.Path(path_type=Path), default=None,
              help="UTF-8 text file to score (lines are joined with newlines).")
@click.option("--token-ids", default=None,
              help="Score these comma-separated token ids instead of a text file.")
@click.option("--tokenizer", type=click.Path(path_type=Path), default=None,
              help="tokenizer.json (default: tokenizer.json beside the source model).")
@click.option("--max-tokens", type=int, default=None, help="Score at most this many tokens.")
@click.option("--window", type=int, default=None,
              help="Tokens per window (default: the build's max_len).")
@click.option("--stride", type=int, default=None,
              help="Tokens between window starts (default: half the window).")
@click.option("--float-model", type=click.Path(path_type=Path), default=None,
              help="Float ONNX model to compare with (default: the build's source model).")
@click.option("--no-float", is_flag=True, help="Skip the float model.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def perplexity_command(build_dir, text, token_ids, tokenizer, max_tokens, window, stride,
                       float_model, no_float, as_json):
    """Perplexity of BUILD on the golden simulator over a text, beside the float model's."""
    from flightllm.host.build import BuildError, load_build
    from flightllm.sim.machine import ProgramError

    try:
        build = load_build(build_dir)
        src = source_model(build)
        if float_model is not None and not Path(float_model).is_file():
            raise CompileError(f"{float_model}: no such ONNX file")
        float_path = None if no_float else (float_model or src)
        tokens = _tokens(text, token_ids, tokenizer, float_path or src, max_tokens)
        window = window or build.max_len
        stride = stride or max(window // 2, 1)
        sliding_windows(len(tokens), window, stride)  # reject bad sizes before any work
        result = {"build": str(build_dir), "window": window, "stride": stride}
        q = build_perplexity(build, tokens, window, stride)
        result.update(perplexity=q["perplexity"], nll=q["nll"], tokens=q["tokens"],
                      seconds=q["seconds"])
        result["float_model"] = str(float_path) if float_path else None
        result["float_perplexity"] = None
        if float_path is not None:
            f = float_perplexity(float_path, tokens, window, stride)
            result["float_perplexity"] = f["perplexity"]
            result["ratio"] = q["perplexity"] / f["perplexity"]
    except (CompileError, BuildError, ProgramError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result, sort_keys=True))
        return
    line = f"perplexity {result['perplexity']:.4f} over {result['tokens']} tokens"
    if result["float_perplexity"] is not None:
        line += (f"; float {result['float_perplexity']:.4f} "
                 f"(ratio {result['ratio']:.4f})")
    click.echo(line + f" (window {window}, stride {stride}, {result['seconds']} s)")


def _tokens(text, token_ids, tokenizer, model_path, max_tokens) -> np.ndarray:
    if (text is None) == (token_ids is None):
        raise CompileError("give exactly one of --text FILE and --token-ids IDS")
    if max_tokens is not None and max_tokens < 2:
        raise CompileError(f"--max-tokens {max_tokens}: perplexity needs at least 2 tokens")
    if token_ids is not None:
        try:
            ids = [int(t) for t in token_ids.replace(" ", "").split(",") if t]
        except ValueError:
            raise CompileError(f"--token-ids {token_ids!r}: expected comma-separated "
                               "integers") from None
        return np.asarray(ids[:max_tokens] if max_tokens else ids, dtype=np.int64)
    if tokenizer is None:
        guess = Path(model_path).parent / "tokenizer.json" if model_path else None
        if guess is None or not guess.is_file():
            raise CompileError("no tokenizer: pass --tokenizer tokenizer.json (none found "
                               "beside the source model)")
        tokenizer = guess
    return tokenize_file(text, load_tokenizer(tokenizer), max_tokens)
