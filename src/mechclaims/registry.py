"""Where targets come from: packages (entry points) and the user's ``pyproject.toml``.

A target is a :class:`mechclaims.targets.TargetSpec` in :data:`mechclaims.targets.TARGETS`.
Two sources fill that registry, in this order:

- the entry-point group ``mechclaims.targets``: each entry point names a ``TargetSpec`` or an
  iterable of them. The core ships none; the post's pack ships its four models this way
  (``mechclaims_icl.targets:TARGETS``), and any installed package can ship more;
- ``[tool.mechclaims.targets.NAME]`` tables in a project's ``pyproject.toml``::

      [tool.mechclaims.targets.my-model]
      path = "models/my-model"        # a local HF directory (relative to pyproject.toml), or
      # hf_id = "org/model"  revision = "main"   (a snapshot in the HF cache; loading stays offline)
      # gguf = "models/my-model.Q4_K_M.gguf"     (dequantised once into the cache, docs/targets.md)
      device = "cpu"                  # cpu, cuda, cuda:N (default cpu)
      dtype = "float32"               # float32, bfloat16, float16 (default float32)
      gpu = false                     # true gives the target pytest's `gpu` marker
      device_map = "auto"             # with n_devices / max_memory: passed to boot_transformers (accelerate)

A name registered twice is an error naming both sources; every error is one line naming the
file, the key and the valid values. A table with a problem (a bad key or value, a path that
loops) registers its target as broken: that target errors with the problem when selected, and
every other target runs. Target names are letters, digits, ``.``, ``_`` and ``-``, not starting
with ``.`` (:func:`check_name`): they name files, such as ``expectations/NAME.toml``.
"""

from __future__ import annotations

import os
import re
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from .errors import TargetError, did_you_mean
from .targets.sources import resolve_configured
from .targets.spec import DEVICE_MAPS, DTYPES, TARGETS, TargetSpec, is_device

ENTRY_POINT_GROUP = "mechclaims.targets"
CONFIG_KEYS = ("path", "hf_id", "gguf", "revision", "summary", "device", "dtype", "gpu", "device_map", "n_devices", "max_memory")

# target name -> where it was registered (for messages and `mechclaims targets`)
_sources: dict[str, str] = {}
_loaded_entry_points = False


_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
# accelerate's sizes: bytes as an integer, or a number with a unit (convert_file_size_to_int)
_SIZE = re.compile(r"[0-9]+(\.[0-9]+)?\s*([KMGT]i?B|B)", re.IGNORECASE)
_MEMORY_DEVICES = ("cpu", "disk", "mps")


def check_name(name: object, where: str = "target") -> str:
    """``name`` when it is a safe target name (letters, digits, ``.``, ``_``, ``-``; not starting with
    ``.``), else a TargetError: names become file names, and no name may lead outside its directory."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise TargetError(f"{where}: target name {name!r} is not allowed; use letters, digits, '.', '_' and '-', "
                          "not starting with '.' (the name becomes file names such as expectations/NAME.toml)")
    return name


def source_of(name: str) -> str:
    return _sources.get(name, "registered in code")


def register(spec: TargetSpec, source: str) -> None:
    """Add ``spec`` to the registry; a name already taken by another source is an error."""
    check_name(spec.name, source)
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
        label = f"package {ep.dist.name if ep.dist else '?'} (entry point {ep.name} = {ep.value})"
        for spec in specs:
            if not isinstance(spec, TargetSpec):
                raise TargetError(f"entry point {ep.name} = {ep.value!r} gave {spec!r}; it must name a TargetSpec "
                                  "or an iterable of them")
            register(spec, label)


def get_spec(name: str) -> TargetSpec:
    """The registered target ``name``. Outside a pytest run (a discovery script, ``load_target``
    in a notebook) a name not registered yet is looked up in the ``[tool.mechclaims.targets.*]``
    tables of the nearest ``pyproject.toml`` at or above the working directory."""
    load_entry_points()
    if name not in TARGETS:
        pyproject = find_pyproject(Path.cwd())
        load_config(pyproject)
        where = (f"{pyproject} has no [tool.mechclaims.targets.{name}] table" if pyproject is not None
                 else f"no pyproject.toml at or above {Path.cwd()}")
    try:
        return TARGETS[name]
    except KeyError:
        raise TargetError(
            f"unknown target {name!r} ({where}); valid targets: {', '.join(TARGETS)}; add your own model as a "
            f"[tool.mechclaims.targets.{name}] table with path = \"DIR\" in your project's pyproject.toml "
            "(docs/targets.md)"
        ) from None


def find_pyproject(start: Path) -> Path | None:
    """The nearest ``pyproject.toml`` at or above ``start``."""
    for directory in (start, *start.parents):
        if (directory / "pyproject.toml").is_file():
            return directory / "pyproject.toml"
    return None


def tool_table(pyproject: Path | None) -> dict[str, Any]:
    """The ``[tool.mechclaims]`` table of ``pyproject`` (empty when there is no file or no table)."""
    if pyproject is None:
        return {}
    try:
        data = tomllib.loads(Path(pyproject).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TargetError(f"{pyproject}: cannot read it ({exc}); fix the file") from None
    table = data.get("tool", {}).get("mechclaims", {})
    if not isinstance(table, dict):
        raise TargetError(f"{pyproject}: tool.mechclaims must be a table [tool.mechclaims]")
    return table


def load_config(pyproject: Path | None) -> list[str]:
    """Register the ``[tool.mechclaims.targets.*]`` tables of ``pyproject``; their names."""
    load_entry_points()
    if pyproject is None:
        return []
    pyproject = pyproject.resolve()
    tables = tool_table(pyproject).get("targets", {})
    if not isinstance(tables, dict):
        raise TargetError(f"{pyproject}: [tool.mechclaims] targets must be tables [tool.mechclaims.targets.NAME]")
    specs = [_spec_or_broken(pyproject, name, table) for name, table in tables.items()]
    for spec in specs:  # all checked before any is registered
        register(spec, str(pyproject))
    return [spec.name for spec in specs]


def configure_project(start: Path | None = None) -> Path | None:
    """Register the targets of the project at or above ``start`` (the working directory): the
    ``[tool.mechclaims.targets.*]`` of its ``pyproject.toml``, besides those installed packages
    ship. A script outside pytest (a discovery script) calls it to see the targets a run sees.
    Returns the ``pyproject.toml`` read, or None when there is none."""
    pyproject = find_pyproject(Path(start) if start is not None else Path.cwd())
    load_config(pyproject)
    return pyproject


def _spec_or_broken(pyproject: Path, name: str, table: Any) -> TargetSpec:
    """The table's target; one whose table has a problem is registered broken, so that it errors
    when selected (naming the problem) and the other targets run. A name that is not allowed is
    an error of the whole file: it cannot be registered, nor selected."""
    check_name(name, f"{pyproject}: [tool.mechclaims.targets]")
    try:
        return _spec_from_table(pyproject, name, table)
    except TargetError as exc:
        return TargetSpec(name, f"misconfigured: {exc}", "cpu", "float32", False, resolve_configured, problem=str(exc))


def unload_config(pyproject: Path | None) -> None:
    """Forget the targets ``pyproject`` registered (a pytest session ends; the next may be elsewhere)."""
    if pyproject is None:
        return
    source = str(pyproject.resolve())
    for name in [n for n, src in _sources.items() if src == source]:
        TARGETS.pop(name, None)
        del _sources[name]


def _is_placement(value: object) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return value >= 0
    return isinstance(value, str) and (is_device(value) or value == "disk")


def _is_size(value: object) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return value >= 1
    return isinstance(value, str) and _SIZE.fullmatch(value.strip()) is not None and float(
        re.match(r"[0-9.]+", value.strip()).group()) > 0


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

    path, hf_id, gguf = text("path"), text("hf_id"), text("gguf")
    if sum(v is not None for v in (path, hf_id, gguf)) != 1:
        given = [k for k, v in (("path", path), ("hf_id", hf_id), ("gguf", gguf)) if v is not None]
        raise TargetError(f"{where} needs exactly one of path (a local HF directory), hf_id (+ revision, a "
                          f"snapshot in the HF cache) or gguf (a GGUF file); it has {' and '.join(given) or 'none'}")
    device, dtype = text("device", "cpu"), text("dtype", "float32")
    if not is_device(device):
        raise TargetError(f"{where} device = {device!r}; valid devices: cpu, cuda, cuda:N (N a GPU index, e.g. cuda:0)")
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
        if isinstance(device_map, dict):
            for module, placed in device_map.items():
                if not _is_placement(placed):
                    raise TargetError(f"{where} device_map {module!r} = {placed!r}; a module goes to a GPU index "
                                      "(0, 1, ...), cuda, cuda:N, cpu or disk")
        boot["device_map"] = device_map
    if "n_devices" in table:
        n = table["n_devices"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise TargetError(f"{where} n_devices = {n!r}; expected an integer >= 1")
        boot["n_devices"] = n
    if "max_memory" in table:
        memory = table["max_memory"]
        example = 'e.g. {0 = "70GiB", 1 = "70GiB", cpu = "200GiB"}'
        if not isinstance(memory, dict) or not memory:
            raise TargetError(f"{where} max_memory = {memory!r}; expected a table of device = size, {example}")
        for key, size in memory.items():
            if not (key.isdigit() or key in _MEMORY_DEVICES):
                raise TargetError(f"{where} max_memory key {key!r}; valid keys: GPU indices (0, 1, ...), "
                                  f"{', '.join(_MEMORY_DEVICES)}; {example}")
            if not _is_size(size):
                raise TargetError(f"{where} max_memory {key} = {size!r}; a size is bytes (an integer >= 1) or a "
                                  f"number with a unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB); {example}")
        boot["max_memory"] = {int(k) if k.isdigit() else k: v for k, v in memory.items()}
    # Not resolved here: a loop or a missing directory is the target's own error when it is selected
    # (targets.resolve_configured), never one of the file that lists it.
    # Relative paths are the project's: its directory, or where MECHCLAIMS_PROJECT_DIR says the project
    # lives (mechclaims ray runs a copy of it on each node, and the weights stay where they are).
    base = Path(os.environ.get("MECHCLAIMS_PROJECT_DIR") or pyproject.parent)
    location = Path(os.path.abspath(base / os.path.expanduser(path))) if path is not None else None
    gguf_file = Path(os.path.abspath(base / os.path.expanduser(gguf))) if gguf is not None else None
    revision = text("revision")
    if revision is not None and hf_id is None:
        raise TargetError(f"{where} revision needs hf_id; a path or gguf file is used as it is")
    summary = text("summary") or (f"local HF directory {location}" if location else
                                  f"GGUF file {gguf_file}, dequantised" if gguf_file else f"{hf_id} from the HF cache")
    return TargetSpec(name, summary, device, dtype, gpu, resolve_configured, location=location, hf_id=hf_id,
                      revision=revision, boot_options=boot, gguf=gguf_file, origin=str(pyproject))
