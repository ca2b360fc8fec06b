"""Sampling from a trained GPT, with or without a KV cache (same seed -> same tokens).

The model conditions on at most block_size tokens (a sliding window). With the cache, the prompt
is prefilled and then tokens are fed one at a time (models/decode.py: preallocated cache and
buffers) while the sequence fits. Past block_size there is no exact cache reuse: positions are
learned and absolute, so when the window slides every token's position changes and with it every
key and value in every layer. Each step then computes the whole window; cache-free, since a
refilled cache would be thrown away by the next step. Measured at the default config (block 64,
200 alternating pairs on a shared 2-core machine): refilling 2.10 ms (p10; median 6.29) against the
cache-free forward's 1.65 ms (median 5.78), which also runs the fused attention op.
"""
from __future__ import annotations

import math

import numpy as np

from minigrad.models.gpt import GPT


class GenerateError(ValueError):
    """Bad sampling parameters; the message is one line."""


def check_sampling(temperature: float, top_k: int | None, top_p: float) -> None:
    if not (temperature >= 0 and math.isfinite(temperature)):   # inf would sample uniformly, NaN garbage
        raise GenerateError(f"--temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise GenerateError(f"--top-k must be at least 1, got {top_k}")
    if not 0 < top_p <= 1:
        raise GenerateError(f"--top-p must lie in (0, 1], got {top_p}")


def sample_token(logits, temperature: float, top_k: int | None, top_p: float, rng: np.random.Generator) -> int:
    """One token id from a (V,) row of logits. Uses exactly one rng.random() draw when temperature > 0."""
    logits = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits / temperature
    if top_k is not None and top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, top_p)) + 1]  # smallest prefix whose mass reaches top_p
        mask = np.zeros_like(p)
        mask[keep] = 1.0
        p = p * mask
        p /= p.sum()
    cdf = np.cumsum(p)
    u = rng.random() * cdf[-1]
    return int(min(np.searchsorted(cdf, u, side="right"), p.size - 1))


def generate(model: GPT, prompt_ids, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float = 1.0, seed: int = 0, use_cache: bool = True, on_token=None) -> list[int]:
    """Continue prompt_ids by max_new_tokens sampled tokens; calls on_token(id) as each one appears."""
    from minigrad import no_grad

    check_sampling(temperature, top_k, top_p)
    ids = [int(i) for i in np.asarray(prompt_ids).reshape(-1)]
    if not ids:
        raise GenerateError("the prompt is empty")
    rng = np.random.default_rng(seed)
    was_training = model.training
    model.eval()
    step = next_logits(model, use_cache)
    try:
        with no_grad():
            for _ in range(max_new_tokens):
                row = step(ids)  # (V,)
                nxt = sample_token(row, temperature, top_k, top_p, rng)
                ids.append(nxt)
                if on_token is not None:
                    on_token(nxt)
    finally:
        if was_training:
            model.train()
    return ids


def next_logits(model: GPT, use_cache: bool = True):
    """f(ids) -> the (V,) logits of the token after the list `ids`, which grows by one token
    between calls. With the cache: the first call prefills, later ones decode one token while the
    sequence fits in block_size; past it (and without the cache) the last block_size tokens are
    run through the forward, last position only."""
    from minigrad.models.decode import Decoder

    bs = model.config.block_size
    dec = Decoder(model, 1) if use_cache else None

    def window(ids):
        logits, _ = model(np.asarray([ids[-bs:]]), last_only=True)
        return np.asarray(logits.numpy()[0, -1])

    def cached(ids):
        if len(ids) > bs:
            return window(ids)
        fed = dec.length
        if fed == len(ids) - 1 and fed > 0:
            return np.array(_host(dec.step([ids[-1]])[0]))
        dec.reset()
        return np.array(_host(dec.prefill(np.asarray([ids]))[0]))

    return cached if use_cache else window


def _host(a):
    return a.get() if hasattr(a, "get") else a


class TextStream:
    """Turns generated ids into printable text pieces (holds back an incomplete UTF-8 sequence)."""

    def __init__(self, tokenizer, write):
        self.tok, self.write = tokenizer, write
        self.ids: list[int] = []
        self.shown = 0

    def __call__(self, token: int) -> None:
        self.ids.append(token)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):
            return
        if len(text) > self.shown:
            self.write(text[self.shown:])
            self.shown = len(text)


def load_model(path, device: str = "cpu", which: str = "latest"):
    """(model, tokenizer, checkpoint) from a run or checkpoint directory, validated; which="best":
    the run's best-validation checkpoint instead of its latest. Before the model is allocated, its
    config must describe the stored weights, and weights plus KV cache must fit in memory."""
    from minigrad.models.checkpoint import CheckpointError, check_arrays, check_param_count, load_checkpoint
    from minigrad.models.gpt import GPTConfig
    from minigrad.models.memory import check_fits, gpt_generate_bytes, gpt_params
    from minigrad.models.tokenize import TokenizerError, tokenizer_from_state

    ckpt = load_checkpoint(path, groups=["model"], which=which)
    if ckpt.meta.get("model") != "gpt":
        raise CheckpointError(f"checkpoint {ckpt.path} holds a {ckpt.meta.get('model')!r} model, not a GPT")
    try:
        cfg = GPTConfig.from_dict(ckpt.meta["model_config"])
        tok = tokenizer_from_state(ckpt.meta["tokenizer"])
    except (KeyError, TypeError, ValueError, TokenizerError) as e:
        raise CheckpointError(f"checkpoint {ckpt.path}: model config or vocabulary is invalid ({e})") from None
    if tok.vocab_size != cfg.vocab_size:
        raise CheckpointError(f"checkpoint {ckpt.path}: vocabulary has {tok.vocab_size} tokens but the model "
                              f"expects {cfg.vocab_size}")
    check_param_count(ckpt, gpt_params(cfg))
    needed, dominant = gpt_generate_bytes(cfg)
    check_fits(needed, f"sampling from checkpoint {ckpt.path}", dominant, "use a machine with more memory")
    model = GPT(cfg)
    check_arrays({n: a.shape for n, a in model.state_dict().items()}, ckpt.arrays["model"], "model weights",
                 ckpt.path)
    model.load_state_dict(ckpt.arrays["model"])
    if device != "cpu":
        model.to(device)
    return model, tok, ckpt


def main(args) -> None:
    """`minigrad generate`: print the prompt, then stream the sampled continuation."""
    import sys

    from minigrad.models.tokenize import TokenizerError

    check_sampling(args.temperature, args.top_k, args.top_p)
    if args.max_new_tokens < 0:
        raise GenerateError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    from minigrad.models.weights import apply_weights

    model, tok, _ = load_model(args.ckpt, args.device, "best" if getattr(args, "best", False) else "latest")
    apply_weights(model, getattr(args, "weights", "float32"))
    try:
        prompt = tok.encode(args.prompt)
    except TokenizerError as e:
        raise GenerateError(f"--prompt: {e}") from None
    out = sys.stdout

    def write(piece):
        out.write(piece)
        out.flush()

    write(args.prompt)
    on_token = TextStream(tok, write)
    if getattr(args, "profile", False):  # prefill and per-token decode times (minigrad/profiler.py)
        from minigrad.profiler import TokenTimer
        on_token = TokenTimer(len(prompt), window=model.config.block_size, cached=not args.no_cache, on_token=on_token)
    generate(model, prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed,
             use_cache=not args.no_cache, on_token=on_token)
    write("\n")
    if getattr(args, "profile", False):
        print(on_token.report(), file=sys.stderr)


def _user_errors():
    from minigrad.models.checkpoint import CheckpointError
    from minigrad.models.memory import ModelTooLargeError
    from minigrad.models.tokenize import TokenizerError
    from minigrad.models.weights import WeightsError
    return (GenerateError, CheckpointError, TokenizerError, ModelTooLargeError, WeightsError)


USER_ERRORS = _user_errors()
