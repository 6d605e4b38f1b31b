"""Stage 0 of a run: the model's card (from the cache when known, else by building the model) with every layer the
config names checked against it, before any image is read.

``ModelHandle`` builds the model only when a result is missing: a fully cached run reads the card and never
imports torch.
"""

from __future__ import annotations

from reportgen.config import RunConfig
from reportgen.errors import ConfigError, ModelError
from reportgen.modelcard import LayerInfo, ModelCard, label_names, read_card, recipe_key, source_problems, write_card
from reportgen.names import close_matches

__all__ = ["ModelHandle", "check_layers", "prepare"]


class ModelHandle:
    """The model of a run: its card at once (from the cache when known), the built module only when needed."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.key = recipe_key(cfg.model)
        self._loaded = None
        self._fresh = False
        card = read_card(cfg.run.cache_dir, self.key)
        if card is None:
            self._loaded = self._build()
            self._fresh = True
            card = self._loaded.card
        self.card: ModelCard = card
        self.labels = label_names(cfg.model.labels, card.num_classes)

    def _build(self):
        from reportgen.models import load_model

        return load_model(self.cfg.model, self.cfg.run.device, channels_last=self.cfg.run.channels_last)

    @property
    def built(self) -> bool:
        return self._loaded is not None

    def loaded(self):
        """The built model (``reportgen.models.LoadedModel``), building it now if needed."""
        if self._loaded is None:
            lm = self._build()
            if lm.card.digest != self.card.digest:
                write_card(self.cfg.run.cache_dir, self.key, lm.card)
                raise ModelError(
                    f"model {self.cfg.model.name!r} was built with other weights than recorded for the same recipe "
                    f"(digest {lm.card.digest[:12]} vs {self.card.digest[:12]}); the record was refreshed: run again"
                )
            self._loaded = lm
        return self._loaded

    def remember(self) -> None:
        """Memoize a freshly built model's card, so the next fully cached run can skip building it."""
        if self._fresh:
            write_card(self.cfg.run.cache_dir, self.key, self.card)
            self._fresh = False

    def device_label(self) -> str:
        if self._loaded is not None:
            return str(self._loaded.device)
        return "not used (all cached)"


def check_layers(cfg: RunConfig, layers: dict[str, LayerInfo]) -> list[str]:
    """One config-error line per requested layer that the model does not have (or that cannot serve its section)."""
    problems = []
    names_in_model = list(layers)
    sections = (("kernels.layers", cfg.kernels.layers), ("feature_maps.layers", cfg.feature_maps.layers),
                ("cams.layers", cfg.cams.layers), ("filters.layers", cfg.filters.layers))
    for key, names in sections:
        for i, name in enumerate(names):
            where = cfg.where(f"{key}[{i}]")
            info = layers.get(name)
            if info is None:
                # past the problems ConfigError shows, only the count matters: skip the costly search
                hint = close_matches(name, names_in_model) if len(problems) < ConfigError.MAX_PROBLEMS else []
                problems.append(f"{where}: no layer named {name!r}"
                                + (f"; did you mean {' or '.join(repr(h) for h in hint)}?" if hint else ""))
            elif key == "kernels.layers" and not info.conv2d:
                problems.append(f"{where}: layer {name!r} is a {info.type}, expected a Conv2d")
            elif key == "filters.layers" and info.conv2d and info.weight_shape:
                out_channels = info.weight_shape[0]
                for j, c in enumerate(cfg.filters.channels):
                    if c >= out_channels:
                        problems.append(f"{cfg.where(f'filters.channels[{j}]')}: channel {c} is out of range for "
                                        f"layer {name!r} with {out_channels} channels")
    return problems


def prepare(cfg: RunConfig) -> ModelHandle:
    """The model's card (building the model if it is not known yet) with every layer name checked against it.

    Raises ``ConfigError`` listing every problem at once.
    """
    try:
        handle = ModelHandle(cfg)
    except ModelError as exc:
        raise ConfigError(f"{cfg.where('model')}: {exc}") from exc
    problems = check_layers(cfg, handle.card.layers) + source_problems(cfg, handle.card.layers)
    if problems:
        raise ConfigError(problems)
    return handle


