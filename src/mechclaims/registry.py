"""Where targets come from: packages (entry points) and the user's ``pyproject.toml``.

A target is a :class:`mechclaims.targets.TargetSpec` in :data:`mechclaims.targets.TARGETS`.
Three sources fill that registry, in this order:

- the entry-point group ``mechclaims.targets``: each entry point names a ``TargetSpec`` or an
  iterable of them. mechclaims ships its four built-in targets this way
  (``mechclaims.targets:BUILTIN``), and any installed package can ship more;
- ``[tool.mechclaims.targets.NAME]`` tables in a project's ``pyproject.toml``::

      [tool.mechclaims.targets.my-model]
      path = "models/my-model"        # a local HF directory (relative to pyproject.toml), or
      # hf_id = "org/model"  revision = "main"   (a snapshot in the HF cache; loading stays offline)
      device = "cpu"                  # cpu, cuda, cuda:N (default cpu)
      dtype = "float32"               # float32, bfloat16, float16 (default float32)
      gpu = false                     # true gives the target pytest's `gpu` marker
      device_map = "auto"             # with n_devices / max_memory: passed to boot_transformers (accelerate)

A name registered twice is an error naming both sources; every error is one line naming the
file, the key and the valid values.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from .errors import TargetError, did_you_mean
from .targets import BUILTIN, DEVICE_MAPS, DEVICES, DTYPES, TARGETS, TargetSpec, resolve_configured

ENTRY_POINT_GROUP = "mechclaims.targets"
CONFIG_KEYS = ("path", "hf_id", "revision", "summary", "device", "dtype", "gpu", "device_map", "n_devices", "max_memory")

BUILTIN_SOURCE = "mechclaims (built-in)"
# target name -> where it was registered (for messages and `mechclaims targets`); the built-ins are
# in TARGETS from import on, and their entry point registers them again under the same source
_sources: dict[str, str] = {spec.name: BUILTIN_SOURCE for spec in BUILTIN}
_loaded_entry_points = False


def source_of(name: str) -> str:
    return _sources.get(name, "registered in code")


def register(spec: TargetSpec, source: str) -> None:
    """Add ``spec`` to the registry; a name already taken by another source is an error."""
    if spec.name in TARGETS and _sources.get(spec.name) != source:
        raise TargetError(
            f"target {spec.name!r} from {source} is already registered by {source_of(spec.name)}; "
            "give it another name"
        )
    TARGETS[spec.name] = spec
    _sources[spec.name] = source


def load_entry_points() -> None:
    """Register every target that installed packages ship (once per process)."""
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            value = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin package is named, not a traceback
            raise TargetError(f"entry point {ep.name} = {ep.value!r} in group {ENTRY_POINT_GROUP} cannot be loaded: "
                              f"{type(exc).__name__}: {exc}; fix or uninstall the package that declares it") from None
        specs: Iterable[Any] = [value] if isinstance(value, TargetSpec) else value
        label = BUILTIN_SOURCE if ep.value == "mechclaims.targets:BUILTIN" else f"entry point {ep.name} ({ep.value})"
        for spec in specs:
            if not isinstance(spec, TargetSpec):
                raise TargetError(f"entry point {ep.name} = {ep.value!r} gave {spec!r}; it must name a TargetSpec "
                                  "or an iterable of them")
            register(spec, label)


def find_pyproject(start: Path) -> Path | None:
    """The nearest ``pyproject.toml`` at or above ``start``."""
    for directory in (start, *start.parents):
        if (directory / "pyproject.toml").is_file():
            return directory / "pyproject.toml"
    return None


def load_config(pyproject: Path | None) -> list[str]:
    """Register the ``[tool.mechclaims.targets.*]`` tables of ``pyproject``; their names."""
    load_entry_points()
    if pyproject is None:
        return []
    pyproject = pyproject.resolve()
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TargetError(f"{pyproject}: cannot read it ({exc}); fix the file") from None
    tables = data.get("tool", {}).get("mechclaims", {}).get("targets", {})
    if not isinstance(tables, dict):
        raise TargetError(f"{pyproject}: [tool.mechclaims] targets must be tables [tool.mechclaims.targets.NAME]")
    specs = [_spec_from_table(pyproject, name, table) for name, table in tables.items()]
    for spec in specs:  # all checked before any is registered
        register(spec, str(pyproject))
    return [spec.name for spec in specs]


def unload_config(pyproject: Path | None) -> None:
    """Forget the targets ``pyproject`` registered (a pytest session ends; the next may be elsewhere)."""
    if pyproject is None:
        return
    source = str(pyproject.resolve())
    for name in [n for n, src in _sources.items() if src == source]:
        TARGETS.pop(name, None)
        del _sources[name]


def _spec_from_table(pyproject: Path, name: str, table: Any) -> TargetSpec:
    where = f"{pyproject}: [tool.mechclaims.targets.{name}]"
    if not isinstance(table, dict):
        raise TargetError(f"{where} must be a table of {', '.join(CONFIG_KEYS)}")
    for key in table:
        if key not in CONFIG_KEYS:
            raise TargetError(f"{where} {key}: not a known key; {did_you_mean(key, CONFIG_KEYS)}"
                              f"valid keys: {', '.join(CONFIG_KEYS)}")

    def text(key: str, default: str | None = None) -> str | None:
        value = table.get(key, default)
        if value is not None and not isinstance(value, str):
            raise TargetError(f"{where} {key} = {value!r}; expected a string")
        return value

    path, hf_id = text("path"), text("hf_id")
    if (path is None) == (hf_id is None):
        raise TargetError(f"{where} needs exactly one of path (a local HF directory) or hf_id (+ revision, "
                          "a snapshot in the HF cache)")
    device, dtype = text("device", "cpu"), text("dtype", "float32")
    if device.split(":")[0] not in DEVICES:
        raise TargetError(f"{where} device = {device!r}; valid devices: {', '.join(DEVICES)} (or cuda:N)")
    if dtype not in DTYPES:
        raise TargetError(f"{where} dtype = {dtype!r}; valid dtypes: {', '.join(DTYPES)}")
    gpu = table.get("gpu", device.startswith("cuda"))
    if not isinstance(gpu, bool):
        raise TargetError(f"{where} gpu = {gpu!r}; expected true or false")
    boot = {}
    if "device_map" in table:
        device_map = table["device_map"]
        if not (device_map in DEVICE_MAPS or isinstance(device_map, dict)):
            raise TargetError(f"{where} device_map = {device_map!r}; valid: {', '.join(DEVICE_MAPS)} or a table "
                              "of module name = device")
        boot["device_map"] = device_map
    if "n_devices" in table:
        n = table["n_devices"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise TargetError(f"{where} n_devices = {n!r}; expected an integer >= 1")
        boot["n_devices"] = n
    if "max_memory" in table:
        memory = table["max_memory"]
        if not isinstance(memory, dict) or not all(isinstance(v, (str, int)) for v in memory.values()):
            raise TargetError(f"{where} max_memory = {memory!r}; expected a table of device = size, "
                              'e.g. {0 = "70GiB", 1 = "70GiB", cpu = "200GiB"}')
        boot["max_memory"] = {int(k) if k.isdigit() else k: v for k, v in memory.items()}
    location = (pyproject.parent / path).resolve() if path is not None else None
    revision = text("revision")
    if revision is not None and hf_id is None:
        raise TargetError(f"{where} revision needs hf_id; a path is used as it is")
    summary = text("summary") or (f"local HF directory {location}" if location else f"{hf_id} from the HF cache")
    return TargetSpec(name, summary, device, dtype, gpu, resolve_configured, location=location, hf_id=hf_id,
                      revision=revision, boot_options=boot)
