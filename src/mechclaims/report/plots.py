"""Plots for ``index.html``: matplotlib (Agg, no display) to inline PNG data URIs.

A claim result's ``figures`` (in ``claims.json``) may hold, besides scalars and
effects, these plot entries. Each is drawn when present; any other key is not a
plot (the page lists scalars and effects in a table and ignores the rest).

``rates`` -- patching curves by layer with confidence bands::

    {class_name: {"rate": [per layer], "ci_low": [...], "ci_high": [...], "n": int, "colour": str}}

  one line per class (a pack's outcome classes), x = layer, y = rate in [0, 1];
  ``colour`` (any matplotlib colour, e.g. ``"#16a34a"``) is optional: without it the
  classes take the palette's colours in order.

``rates_by_variant`` -- the same curves under each pre-registered variant (e.g. a prompt
format), drawn side by side on one shared y axis::

    {variant_name: {class_name: {"rate": [...], "ci_low": [...], "ci_high": [...], "n": int}}}

``heatmaps`` -- one heatmap per title, e.g. head scores before and after an ablation::

    {title: {"matrix": [[...], ...], "xlabel": str, "ylabel": str}}

  rows of ``matrix`` are layers (drawn bottom-up), columns e.g. heads. Optional
  ``"scale": str``: heatmaps of one entry with the same ``scale`` share a colour
  scale (before/after an ablation compare directly); without it each has its own.
  Non-negative data get a sequential map from 0, signed data a diverging map
  centred on 0.

``curves`` -- line plots with an optional band and fit::

    {title: {"x": [...], "y": [...], "ci_low": [...], "ci_high": [...], "fit": [...],
             "xlabel": str, "ylabel": str}}

  ``ci_low``/``ci_high`` (a band) and ``fit`` (a dashed line over the same x) are optional.

``bars`` -- bar charts with optional error bars::

    {title: {"labels": [...], "values": [...], "ci_low": [...], "ci_high": [...], "ylabel": str}}

``None`` in any number list (a non-finite value in JSON) is drawn as a gap. An
entry that does not follow its schema is not drawn; the page says why.

A figure none of these schemas draws is the pack's own: it implements the
``pytest_mechclaims_plots`` hook (:mod:`mechclaims.hookspecs`), which returns matplotlib
figures for a claim result; they are kept as inline PNGs in the claim's ``plots``
(:func:`pack_plot_entries`) and shown after the schema plots (:func:`pack_plots`).

Drawing is a pure function of an entry, this module's source and matplotlib's
version, so :func:`plots_for` can keep what it drew in a directory (``cache``) and
serve the same entry from there next time (a run whose figures did not change).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import textwrap
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

# Every plot is an inline PNG; a kept plot whose uri is anything else is not used.
PNG_URI = "data:image/png;base64,"
PLOT_KINDS = ("rates", "rates_by_variant", "heatmaps", "curves", "bars")

# The colours of classes that name none of their own, in order.
_CYCLE = ("#9333ea", "#db2777", "#0891b2", "#65a30d", "#b45309")


class FigureSchemaError(ValueError):
    """A plot entry of ``figures`` that does not follow its schema."""


@dataclass(frozen=True)
class Plot:
    """One drawn plot: its caption and the PNG as a ``data:`` URI."""

    title: str
    uri: str


@dataclass(frozen=True)
class PlotError:
    """A plot entry that could not be drawn, and why."""

    title: str
    reason: str


# --------------------------------------------------------------------------- helpers


def _numbers(value: Any, what: str, length: int | None = None) -> np.ndarray:
    if not isinstance(value, (list, tuple)):
        raise FigureSchemaError(f"{what} must be a list of numbers, got {type(value).__name__}")
    if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in value):
        raise FigureSchemaError(f"{what} must hold only numbers (or null)")
    if length is not None and len(value) != length:
        raise FigureSchemaError(f"{what} has {len(value)} values, expected {length}")
    return np.array([math.nan if v is None else float(v) for v in value], dtype=float)


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FigureSchemaError(f"{what} must be an object, got {type(value).__name__}")
    return value


def _label(spec: dict[str, Any], key: str, default: str = "") -> str:
    value = spec.get(key, default)
    return value if isinstance(value, str) else str(value)


def _figure(width: float = 6.4, height: float = 3.6):
    from matplotlib.figure import Figure  # Figure without pyplot: Agg canvas, no display, no global state

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.subplots()


def _style(ax) -> None:
    ax.grid(True, color="#d0d7de", linewidth=0.6, alpha=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _title(ax, title: str, fontsize: float = 10) -> None:
    """The plot's title, wrapped to the figure's width."""
    width = ax.figure.get_figwidth()
    ax.set_title(textwrap.fill(title, max(20, int(width * 105 / fontsize))), fontsize=fontsize)


def _uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return PNG_URI + base64.b64encode(buf.getvalue()).decode("ascii")


# --------------------------------------------------------------------------- a pack's own figures


def pack_plot_entries(drawn: Any) -> list[dict[str, str]]:
    """What a pack's ``pytest_mechclaims_plots`` implementations returned (one list per
    implementation), as the entries of a claim's ``plots`` in ``claims.json``: ``{"title", "png"}``
    for each figure drawn, ``{"title", "error"}`` for anything that is not a ``(title, Figure)`` pair."""
    from matplotlib.figure import Figure

    entries: list[dict[str, str]] = []
    for returned in drawn:
        if returned is None:
            continue
        if not isinstance(returned, (list, tuple)):
            entries.append({"title": "pack figures", "error": f"pytest_mechclaims_plots returned "
                            f"{type(returned).__name__}; expected a list of (title, matplotlib Figure) pairs"})
            continue
        for pair in returned:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[1], Figure)):
                entries.append({"title": "pack figure", "error": f"{type(pair).__name__} {str(pair)[:80]!r} is "
                                "not a (title, matplotlib Figure) pair"})
                continue
            title, fig = str(pair[0]), pair[1]
            try:
                entries.append({"title": title, "png": _uri(fig)})
            except (ValueError, TypeError, RuntimeError) as exc:  # matplotlib refusing the figure's data
                entries.append({"title": title, "error": f"{type(exc).__name__}: {exc}"})
    return entries


def pack_plots(entries: Any) -> list[Plot | PlotError]:
    """A claim's ``plots`` (from ``claims.json``, untrusted) as plots to show: only inline PNGs are
    shown; an error entry, or one off this shape, is shown as not drawn."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        return [PlotError("pack figures", f"plots must be a list, got {type(entries).__name__}")]
    out: list[Plot | PlotError] = []
    for entry in entries:
        title = str(entry.get("title", "pack figure")) if isinstance(entry, dict) else "pack figure"
        if isinstance(entry, dict) and isinstance(entry.get("png"), str) and entry["png"].startswith(PNG_URI):
            out.append(Plot(title, entry["png"]))
        elif isinstance(entry, dict) and isinstance(entry.get("error"), str):
            out.append(PlotError(title, entry["error"]))
        else:
            out.append(PlotError(title, "not an inline PNG ({'title', 'png': 'data:image/png;base64,...'})"))
    return out


def _integer_ticks(ax, axis: str = "x") -> None:
    from matplotlib.ticker import MaxNLocator

    getattr(ax, f"{axis}axis").set_major_locator(MaxNLocator(integer=True))


# --------------------------------------------------------------------------- the kinds


def rates_plot(rates: Any, title: str = "rate by layer") -> Plot:
    fig, ax = _figure()
    n_values = _draw_rates(ax, rates, "rates")
    n_text = f" (n={n_values.pop()}, 95% CI bands)" if len(n_values) == 1 else ""
    _title(ax, title + n_text)
    ax.set_ylabel("rate")
    fig.legend(fontsize=8, frameon=False, loc="outside right upper")
    return Plot(title, _uri(fig))


def variant_rates_plot(variants: Any, title: str = "rate by layer, per variant") -> Plot:
    """One panel per variant, side by side, sharing the y axis."""
    variants = _mapping(variants, "rates_by_variant")
    if not variants:
        raise FigureSchemaError("rates_by_variant is empty")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2 * len(variants) + 1.2, 3.4), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(variants), sharey=True, squeeze=False)
    n_values: set[int] = set()
    for ax, (name, rates) in zip(axes[0], variants.items()):
        n_values |= _draw_rates(ax, rates, f"rates_by_variant[{name!r}]")
        _title(ax, str(name))
    axes[0][0].set_ylabel("rate")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, frameon=False, loc="outside right upper")
    n_text = f" (n={n_values.pop()}, 95% CI bands)" if len(n_values) == 1 else ""
    fig.suptitle(title + n_text, fontsize=10)
    return Plot(title, _uri(fig))


def _draw_rates(ax, rates: Any, what: str) -> set[int]:
    """Draw one rates entry on ``ax``; returns the n values it states."""
    rates = _mapping(rates, what)
    if not rates:
        raise FigureSchemaError(f"{what} is empty")
    n_values = set()
    for i, (name, spec) in enumerate(rates.items()):
        spec = _mapping(spec, f"{what}[{name!r}]")
        y = _numbers(spec.get("rate"), f"{what}[{name!r}].rate")
        x = np.arange(len(y))
        colour = spec.get("colour") if isinstance(spec.get("colour"), str) else _CYCLE[i % len(_CYCLE)]
        if "ci_low" in spec and "ci_high" in spec:
            low = _numbers(spec["ci_low"], f"{what}[{name!r}].ci_low", len(y))
            high = _numbers(spec["ci_high"], f"{what}[{name!r}].ci_high", len(y))
            ax.fill_between(x, low, high, color=colour, alpha=0.18, linewidth=0)
        ax.plot(x, y, marker="o", markersize=3.5, linewidth=1.8, color=colour, label=str(name))
        if isinstance(spec.get("n"), int):
            n_values.add(spec["n"])
    ax.set_xlabel("layer")
    ax.set_ylim(-0.02, 1.02)
    _integer_ticks(ax)
    _style(ax)
    return n_values


def _colour_scale(matrices: list[np.ndarray]) -> tuple[str, float, float]:
    """(colormap, vmin, vmax): sequential from 0 for non-negative data, else diverging around 0."""
    values = np.concatenate([m[np.isfinite(m)].ravel() for m in matrices]) if matrices else np.zeros(0)
    if values.size == 0:
        return "Blues", 0.0, 1.0
    if values.min() >= 0:
        return "Blues", 0.0, float(values.max()) or 1.0
    top = float(np.abs(values).max()) or 1.0
    return "RdBu_r", -top, top


def heatmap_plots(heatmaps: Any) -> list[Plot | PlotError]:
    heatmaps = _mapping(heatmaps, "heatmaps")
    checked: list[tuple[str, dict[str, Any], np.ndarray] | PlotError] = []
    for title, spec in heatmaps.items():
        try:
            spec = _mapping(spec, f"heatmaps[{title!r}]")
            rows = spec.get("matrix")
            if not isinstance(rows, list) or not rows or not all(isinstance(r, list) for r in rows):
                raise FigureSchemaError(f"heatmaps[{title!r}].matrix must be a non-empty list of rows")
            width = len(rows[0])
            matrix = np.stack([_numbers(r, f"heatmaps[{title!r}].matrix row {i}", width) for i, r in enumerate(rows)])
            checked.append((str(title), spec, matrix))
        except FigureSchemaError as exc:
            checked.append(PlotError(str(title), str(exc)))

    def group(title: str, spec: dict[str, Any]) -> tuple[str, str]:
        scale = spec.get("scale")
        return ("scale", scale) if isinstance(scale, str) else ("own", title)

    members: dict[tuple[str, str], list[np.ndarray]] = {}
    for item in checked:
        if not isinstance(item, PlotError):
            members.setdefault(group(item[0], item[1]), []).append(item[2])
    out: list[Plot | PlotError] = []
    for item in checked:
        if isinstance(item, PlotError):
            out.append(item)
            continue
        title, spec, matrix = item
        cmap, vmin, vmax = _colour_scale(members[group(title, spec)])
        n_rows, n_cols = matrix.shape
        fig, ax = _figure(width=min(6.4, max(4.4, 2.2 + 0.45 * n_cols)), height=min(6.0, max(2.8, 1.5 + 0.32 * n_rows)))
        image = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, origin="lower", aspect="auto",
                          interpolation="nearest")
        fig.colorbar(image, ax=ax, shrink=0.9)
        if n_rows * n_cols <= 64:
            for (r, c), v in np.ndenumerate(matrix):
                if math.isfinite(v):
                    strong = abs(v) > 0.6 * max(abs(vmin), abs(vmax))
                    ax.text(c, r, f"{v:.2g}", ha="center", va="center", fontsize=7,
                            color="white" if strong else "#24292f")
        _title(ax, title, 9)
        ax.set_xlabel(_label(spec, "xlabel"))
        ax.set_ylabel(_label(spec, "ylabel", "layer"))
        _integer_ticks(ax, "x")
        _integer_ticks(ax, "y")
        out.append(Plot(title, _uri(fig)))
    return out


def curve_plot(title: str, spec: Any) -> Plot:
    spec = _mapping(spec, f"curves[{title!r}]")
    y = _numbers(spec.get("y"), f"curves[{title!r}].y")
    x = _numbers(spec.get("x"), f"curves[{title!r}].x", len(y))
    fig, ax = _figure()
    if "ci_low" in spec and "ci_high" in spec:
        low = _numbers(spec["ci_low"], f"curves[{title!r}].ci_low", len(y))
        high = _numbers(spec["ci_high"], f"curves[{title!r}].ci_high", len(y))
        ax.fill_between(x, low, high, color="#2563eb", alpha=0.18, linewidth=0, label="95% CI")
    ax.plot(x, y, marker="o", markersize=3.5, linewidth=1.8, color="#2563eb", label="measured")
    if "fit" in spec:
        fit = _numbers(spec["fit"], f"curves[{title!r}].fit", len(y))
        ax.plot(x, fit, linestyle="--", linewidth=1.6, color="#d97706", label="fit")
    _title(ax, title)
    ax.set_xlabel(_label(spec, "xlabel"))
    ax.set_ylabel(_label(spec, "ylabel"))
    _style(ax)
    if len(ax.get_legend_handles_labels()[0]) > 1:
        ax.legend(fontsize=8, frameon=False)
    return Plot(title, _uri(fig))


def bar_plot(title: str, spec: Any) -> Plot:
    spec = _mapping(spec, f"bars[{title!r}]")
    labels = spec.get("labels")
    if not isinstance(labels, list) or not labels:
        raise FigureSchemaError(f"bars[{title!r}].labels must be a non-empty list")
    values = _numbers(spec.get("values"), f"bars[{title!r}].values", len(labels))
    fig, ax = _figure(width=min(9.0, max(4.0, 1.2 + 0.55 * len(labels))))
    x = np.arange(len(labels))
    yerr = None
    if "ci_low" in spec and "ci_high" in spec:
        low = _numbers(spec["ci_low"], f"bars[{title!r}].ci_low", len(labels))
        high = _numbers(spec["ci_high"], f"bars[{title!r}].ci_high", len(labels))
        yerr = np.abs(np.vstack([values - low, high - values]))
    ax.bar(x, values, color="#2563eb", alpha=0.85, width=0.7)
    if yerr is not None:
        ax.errorbar(x, values, yerr=yerr, fmt="none", ecolor="#24292f", capsize=3, linewidth=1)
    ax.axhline(0, color="#57606a", linewidth=0.8)
    names = [textwrap.fill(str(label), 14) for label in labels]
    slanted = len(labels) > 6
    ax.set_xticks(x, names, rotation=30 if slanted else 0, ha="right" if slanted else "center", fontsize=8)
    _title(ax, title)
    ax.set_ylabel(_label(spec, "ylabel"))
    _style(ax)
    ax.grid(False, axis="x")
    return Plot(title, _uri(fig))


def _titled(kind: str, draw: Callable[[str, Any], Plot]) -> Callable[[Any], list[Plot | PlotError]]:
    def each(entries: Any) -> list[Plot | PlotError]:
        out: list[Plot | PlotError] = []
        for title, spec in _mapping(entries, kind).items():
            try:
                out.append(draw(str(title), spec))
            except (ValueError, TypeError) as exc:  # off the schema, or data matplotlib refuses
                out.append(PlotError(str(title), str(exc)))
        return out

    return each


_DRAW: dict[str, Callable[[Any], list[Plot | PlotError]]] = {
    "rates": lambda value: [rates_plot(value)],
    "rates_by_variant": lambda value: [variant_rates_plot(value)],
    "heatmaps": heatmap_plots,
    "curves": _titled("curves", curve_plot),
    "bars": _titled("bars", bar_plot),
}


def plots_for(figures: Any, cache: Path | None = None,
              drawn: dict[str, list[list[str]]] | None = None) -> list[Plot | PlotError]:
    """Every plot that ``figures`` (one claim result's) asks for, in PLOT_KINDS order.

    Never raises on content: an entry off its schema becomes a :class:`PlotError`.
    With ``cache`` (a directory), an entry drawn before is read from there, and one
    drawn now without error is kept there. ``drawn`` is the same in memory: entries found
    there are not drawn again, and entries drawn now are added (pytest-xdist workers draw the
    plots of the claims they ran and send them along, so the report's writer draws none).
    """
    if not isinstance(figures, dict):
        return []
    out: list[Plot | PlotError] = []
    for kind in PLOT_KINDS:
        if kind not in figures:
            continue
        key = _key(kind, figures[kind])
        path = None if cache is None or key is None else Path(cache) / f"{key}.json"
        kept = _from_memo(drawn, key)
        if kept is None:
            kept = _read_kept(path)
        if kept is not None:
            out.extend(kept)
            continue
        try:
            plots = _DRAW[kind](figures[kind])
        except FigureSchemaError as exc:
            plots = [PlotError(kind, str(exc))]
        except (ValueError, TypeError) as exc:  # matplotlib refusing odd data
            plots = [PlotError(kind, f"{type(exc).__name__}: {exc}")]
        if all(isinstance(p, Plot) for p in plots):
            if path is not None:
                _keep(path, plots, root=Path(cache).parent)
            if drawn is not None and key is not None:
                drawn[key] = [[p.title, p.uri] for p in plots]
        out.extend(plots)
    return out


def _from_memo(drawn: dict[str, list[list[str]]] | None, key: str | None) -> list[Plot] | None:
    """The plots ``drawn`` holds for ``key``; None when absent or not inline PNGs (drawn again)."""
    if drawn is None or key is None or key not in drawn:
        return None
    try:
        plots = [Plot(str(title), str(uri)) for title, uri in drawn[key]]
    except (TypeError, ValueError):
        return None
    return plots if all(p.uri.startswith(PNG_URI) for p in plots) else None


# --------------------------------------------------------------------------- kept plots


@lru_cache(maxsize=1)
def _renderer() -> str:
    """What else a drawing depends on: this module's source and matplotlib's version."""
    import matplotlib

    return hashlib.sha256(Path(__file__).read_bytes() + matplotlib.__version__.encode()).hexdigest()


def _key(kind: str, entry: Any) -> str | None:
    """What a drawing of ``entry`` is kept under: a digest of it and of the renderer."""
    try:
        text = json.dumps([kind, entry], sort_keys=True)
    except (TypeError, ValueError):  # not JSON data: draw it, keep nothing
        return None
    return hashlib.sha256((_renderer() + text).encode()).hexdigest()


def _read_kept(path: Path | None) -> list[Plot] | None:
    """The plots kept at ``path``; None when there are none or the file is unreadable (drawn again)."""
    if path is None or not path.is_file():
        return None
    try:
        kept = json.loads(path.read_text())
        plots = [Plot(str(title), str(uri)) for title, uri in kept["plots"]]
        key, digest = kept["key"], kept["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # kept plots are untrusted, as activation-cache entries are: the entry must be the one its
    # name promises, intact, and only inline PNGs (all this module draws); otherwise drawn again
    if key != path.stem or digest != _plots_digest(plots) or not all(p.uri.startswith(PNG_URI) for p in plots):
        return None
    return plots


def _plots_digest(plots: list[Plot]) -> str:
    return hashlib.sha256(json.dumps([[p.title, p.uri] for p in plots]).encode()).hexdigest()


def _keep(path: Path, plots: list[Plot | PlotError], root: Path) -> None:
    """Keep drawn plots at ``path``, a write confined to ``root`` (the directory holding the
    plot cache, so a planted link in place of the cache cannot carry it elsewhere)."""
    from ..files import write_text_atomic

    try:
        drawn = [p for p in plots if isinstance(p, Plot)]
        entry = {"key": path.stem, "sha256": _plots_digest(drawn), "plots": [[p.title, p.uri] for p in drawn]}
        write_text_atomic(path, json.dumps(entry), root=root)
    except OSError:  # a read-only or full cache directory costs time, never the report
        pass
