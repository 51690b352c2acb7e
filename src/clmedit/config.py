"""Settings: the editor hparams base, preset lookup, YAML load/save, and the run configuration.

Layer indices in hparams are given for a model `reference_layers` deep (the study's 32-layer
7B models by default) and rescaled to the edited model's depth at apply time, so one default
works on any model. A preset fixes them for one model (its reference_layers = its depth).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from clmedit.errors import InputError, describe_validation
from clmedit.files import regular_file
from clmedit.models.arch import check_layer, rescale_layer, rescale_layers

PRESETS_DIR = Path(__file__).parent / "presets"

# model name (lower-cased, with or without the hub owner) -> preset name
MODEL_PRESETS: dict[str, str] = {
    "codellama/codellama-7b-hf": "codellama-7b",
    "codellama-7b-hf": "codellama-7b",
    "codellama-7b": "codellama-7b",
    "qwen/codeqwen1.5-7b": "codeqwen1.5-7b",
    "codeqwen1.5-7b": "codeqwen1.5-7b",
    "stabilityai/stable-code-3b": "stable-code-3b",
    "stable-code-3b": "stable-code-3b",
    "smollm2-135m": "smollm2-135m",
    "huggingfacetb/smollm2-135m-instruct": "smollm2-135m",
    "smollm2-135m-instruct": "smollm2-135m",
}

H = TypeVar("H", bound="EditorHParams")


def study_keys(*words: str) -> frozenset[str]:
    """A set of the study's YAML key names from space-separated words."""
    return frozenset(" ".join(words).split())


# keys every study (EasyEdit) hparams YAML may hold that we do not need: names, devices and module
# templates (models/arch.py knows where modules live)
STUDY_COMMON = study_keys(
    "alg alg_name model_name model_class tokenizer_class tokenizer_name device fp16 "
    "model_parallel batch_size max_length rewrite_module_tmp rewrite_module_tmps layer_module_tmp "
    "mlp_module_tmp attn_module_tmp ln_f_module lm_head_module results_dir stats_dir"
)


class EditorHParams(BaseModel):
    """Base of every editor's hparams: frozen, validated, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    # keys of the study's YAML for this editor (beyond STUDY_COMMON) that from_study reads or ignores
    STUDY_KEYS: ClassVar[frozenset[str]] = frozenset()
    # the field naming a folder whose trained part the editor loads when built (A-GRACE's encoder_dir,
    # MALMEN's hypernet_dir): a path of this machine, which `portable` leaves out
    TRAINED_FROM: ClassVar[str | None] = None

    reference_layers: int = Field(32, gt=0, description="depth the layer indices were chosen for")
    seed: int = Field(0, description="seed for any randomness inside the editor")

    @model_validator(mode="after")
    def _layers_in_range(self):
        """Every `layer` / `layers` index must exist in a reference_layers-deep model (never clamped)."""
        for name in ("layer", "layers"):
            value = getattr(self, name, None)
            for layer in [value] if isinstance(value, int) else value or []:
                check_layer(layer, self.reference_layers, what=f"{type(self).__name__}.{name}: layer")
        return self

    def layer_for(self, layer: int, num_layers: int) -> int:
        """`layer` rescaled from reference_layers to the model's depth."""
        if num_layers == self.reference_layers:
            check_layer(layer, num_layers)
            return layer if layer >= 0 else num_layers + layer
        return rescale_layer(layer, num_layers, self.reference_layers)

    def layers_for(self, layers: list[int], num_layers: int) -> list[int]:
        """A layer set rescaled to the model's depth, keeping its shape (models.arch.rescale_layers)."""
        return rescale_layers(layers, num_layers, self.reference_layers)

    @classmethod
    def build(cls: type[H], values: dict[str, Any], source: str = "hparams") -> H:
        """Construct from `values`; an unknown key or invalid value raises InputError naming it."""
        unknown = sorted(set(values) - set(cls.model_fields))
        if unknown:
            raise InputError(
                f"{source}: unknown hparams key(s) {', '.join(map(repr, unknown))} for {cls.__name__}; "
                f"valid keys: {', '.join(sorted(cls.model_fields))}"
            )
        try:
            return cls(**values)
        except ValidationError as err:
            raise InputError(f"{source}: invalid hparams for {cls.__name__}: {describe_validation(err)}") from None

    def override(self: H, source: str = "overrides", **overrides: Any) -> H:
        """A copy with `overrides` applied, validated like construction (never `model_copy`)."""
        if not overrides:
            return self
        return self.build({**self.model_dump(), **overrides}, source)

    def portable(self) -> dict[str, Any]:
        """The hparams as JSON without `TRAINED_FROM`: what a fix file stores (it carries the trained
        part it needs itself, so an editor built from these on another machine reads no folder)."""
        dumped = self.model_dump(mode="json")
        if self.TRAINED_FROM is not None:
            dumped[self.TRAINED_FROM] = None
        return dumped

    @classmethod
    def from_study(cls: type[H], raw: dict[str, Any]) -> H:
        """Build from the study's hparams YAML keys. Editors override to translate their keys."""
        return cls.build({k: v for k, v in raw.items() if k in cls.model_fields}, "study hparams")

    @classmethod
    def from_yaml(cls: type[H], path: str | Path, **overrides: Any) -> H:
        """Load our YAML or the study's (detected by keys unknown to us); an unknown key is an error."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"hparams file {path} does not exist")
        regular_file(path, "hparams file")  # a FIFO would block the read
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise InputError(f"{path}: not valid YAML ({err})") from None
        if not isinstance(raw, dict):
            raise InputError(f"{path}: expected a mapping of hparams, got {type(raw).__name__}")
        ours = set(cls.model_fields)
        unknown = sorted(set(raw) - ours - cls.STUDY_KEYS - STUDY_COMMON)
        if unknown:
            raise InputError(
                f"{path}: unknown hparams key(s) {', '.join(map(repr, unknown))} for {cls.__name__}; "
                f"valid keys: {', '.join(sorted(ours))} (or the study's YAML keys)"
            )
        base = cls.build(raw, str(path)) if set(raw) <= ours else cls.from_study(raw)
        return base.override(f"{path} + overrides", **overrides)

    def to_yaml(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.model_dump(), sort_keys=False))
        return path


def preset_for_model(model_name: str) -> str | None:
    """The preset name for a model name or path, if we ship one."""
    key = model_name.strip().rstrip("/").lower()
    return MODEL_PRESETS.get(key) or MODEL_PRESETS.get(key.rsplit("/", 1)[-1])


def preset_path(editor: str, preset: str) -> Path:
    return PRESETS_DIR / editor / f"{preset}.yaml"


def load_hparams(cls: type[H], editor: str, preset: str | None = None, **overrides: Any) -> H:
    """Defaults < preset YAML (if one exists for this editor) < explicit overrides."""
    if preset is None:
        return cls.build(overrides, "overrides")
    path = Path(preset)
    if path.suffix in (".yaml", ".yml"):
        return cls.from_yaml(path, **overrides)
    name = preset_for_model(preset) or preset
    path = preset_path(editor, name)
    if not path.is_file():
        known = sorted(p.stem for p in (PRESETS_DIR / editor).glob("*.yaml"))
        if preset_for_model(preset) is None and name not in known:
            raise InputError(f"no preset {preset!r} for editor {editor!r}; known: {known or 'none'}")
        return cls.build(overrides, "overrides")
    return cls.from_yaml(path, **overrides)
