"""Installing a bundle's models and saved KV states where this install looks for them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from offline_agent import modelstore
from offline_agent.bundle import manifest as mf
from offline_agent.errors import ConfigError, ModelError
from offline_agent.llm import kvfile

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Placed:
    """What `place` put where."""

    models: dict[str, Path]
    kv_states: list[Path]


def place(
    folder: Path,
    models_dir: Path,
    state_dir: Path,
    names: Sequence[str] = (),
    *,
    progress: Progress | None = None,
) -> Placed:
    """Copy the bundle's models (or those named) into models_dir, checking each sha256, and
    their saved KV states into state_dir, re-keyed to the copies.

    A built-in model goes where `models fetch` puts it, and must be the file this install's
    registry names; a model the bundle's writer had added by path goes into models_dir and
    is registered there by path, as `models add` would.
    """
    say = progress or (lambda _msg: None)
    manifest = mf.read(folder)
    entries = modelstore.read_registry_file(folder / mf.REGISTRY)
    bundled = [m["name"] for m in manifest.models]
    for name in names:
        if name not in bundled:
            raise ModelError(f"the bundle has no model {name!r}; it has: {', '.join(bundled)}")
    registry = modelstore.load_registry(modelstore.user_registry_path(models_dir))
    added: dict[str, modelstore.ModelSpec] = {}
    placed: dict[str, Path] = {}
    for name in names or bundled:
        spec = entries[name]
        ours = registry.models.get(name)
        if spec.fetchable:
            if ours is None or ours.sha256 != spec.sha256:
                raise ModelError(
                    f"the bundle's {name} (sha256 {spec.sha256[:12]}…) is not the one this "
                    "install's registry knows by that name"
                )
            target_spec = ours
        else:
            if ours is not None and ours.sha256 != spec.sha256:
                raise ConfigError(
                    f"a model named {name} is registered here already, with another file; "
                    "remove it from the registry first"
                )
            target_spec = dataclasses.replace(spec, path=(models_dir / spec.filename).absolute())
            added[name] = target_spec
        source = folder / mf.MODELS / spec.filename
        placed[name] = modelstore.place(target_spec, source, models_dir, progress=say)
    if added:
        modelstore.register(added.values(), models_dir)
    states = []
    for entry in manifest.kv_states:
        if entry["model"] in placed:
            states.append(kvfile.rehome(folder / entry["file"], placed[entry["model"]], state_dir))
    if states:
        say(f"saved KV states: {len(states)} placed in {state_dir}")
    return Placed(placed, states)
