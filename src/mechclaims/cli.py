"""The ``mechclaims`` command: ``report RUN`` re-renders claims.md and index.html
from a claims.json; ``compare RUN_A RUN_B`` lists changes and exits 1 on a regression;
``merge SHARD... --out DIR`` joins the reports of a sharded run (--mechclaims-shard K/N) into one;
``ray PYTEST_ARGS... --out DIR [--address A]`` runs the shards as Ray tasks and merges them;
``targets`` lists every registered target, where it comes from and whether its weights are there;
``cache info|prune|clear`` shows the disk activation cache and keeps it in bounds."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import ConfigError, MechclaimsError
from .files import describe_os_error
from .report.claims_json import render_views
from .report.compare import compare, incomplete
from .report.reading import read_run, resolve_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mechclaims", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="re-render claims.md and index.html next to a run's claims.json")
    rep.add_argument("run", type=Path, help="run directory (reports/<run-id>) or its claims.json")
    cmp_ = sub.add_parser("compare", help="changed verdicts and figures between two runs")
    cmp_.add_argument("run_a", type=Path, help="the reference run (e.g. the last accepted one)")
    cmp_.add_argument("run_b", type=Path, help="the new run")
    mrg = sub.add_parser("merge", help="one report from the reports of every shard of a run (--mechclaims-shard K/N)")
    mrg.add_argument("shards", type=Path, nargs="+", help="each shard's run directory (reports/<run-id>) or claims.json")
    mrg.add_argument("--out", type=Path, required=True, help="the reports directory to write the merged run into")
    ray = sub.add_parser(
        "ray", allow_abbrev=False,
        usage="mechclaims ray [--out DIR] [--address A] [--shards N] [--retries R] [--cpus-per-shard C] PYTEST_ARGS...",
        help="run the claims over a Ray cluster, one task per shard, and merge the reports (docs/distributed.md)",
        description="Run the claims PYTEST_ARGS select over a Ray cluster, one task per shard (a target's claims "
        "in one shard), and merge the shards' reports into one run. Every argument below is mechclaims ray's; "
        "every other goes to each shard's pytest, e.g. mechclaims ray claims/ --mechclaims-target model-a "
        "--mechclaims-target model-b.")
    ray.add_argument("--out", type=Path, default=Path("reports"),
                     help="the reports directory of the merged run (default reports)")
    ray.add_argument("--address", default=None,
                     help="the Ray cluster (ray://HOST:10001, HOST:6379 or auto; default: a local Ray on this machine)")
    ray.add_argument("--shards", type=int, default=None, help="how many shards (default: one per --mechclaims-target)")
    ray.add_argument("--retries", type=int, default=2,
                     help="times a shard is retried when its node or worker dies (default 2)")
    ray.add_argument("--cpus-per-shard", type=float, default=1.0,
                     help="CPUs a shard of CPU targets asks for; its torch threads (default 1)")
    tgt = sub.add_parser("targets", help="registered targets: source, weights, expectations file")
    tgt.add_argument("--claims-dir", type=Path, default=Path("claims"),
                     help="where the pack's expectations/ are (default claims; a project's [tool.mechclaims] "
                     "expectations directory comes first)")
    cache = sub.add_parser("cache", help="the disk activation cache: info, prune, clear")
    cache_sub = cache.add_subparsers(dest="action", required=True)
    for action, text in (("info", "where the cache is, its size and entries, oldest and newest per target"),
                         ("prune", "remove entries unused for a while, then the least recently used down to a size"),
                         ("clear", "remove every entry")):
        one = cache_sub.add_parser(action, help=text)
        one.add_argument("--dir", type=Path, default=None,
                         help="the cache directory (default: $MECHCLAIMS_CACHE_DIR/activations, else "
                         "~/.cache/mechclaims/activations; the same as the claim runs')")
        if action == "prune":
            one.add_argument("--older-than", default=None, metavar="AGE",
                             help="remove entries not used for longer than AGE (90s, 30m, 12h, 7d)")
            one.add_argument("--max-size", default=None, metavar="SIZE",
                             help="then remove the least recently used until the cache holds at most SIZE "
                             "(bytes, or 500MB, 2GiB, ...)")
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "ray":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "ray":
            from . import ray_run

            return ray_run.run(rest, args.out, address=args.address, shards=args.shards, retries=args.retries,
                               cpus_per_shard=args.cpus_per_shard)[0]
        if args.command == "cache":
            return _cache(args)
        if args.command == "targets":
            return _list_targets(args.claims_dir)
        if args.command == "merge":
            return _merge(args.shards, args.out)
        if args.command == "report":
            record = read_run(args.run)
            run_dir = resolve_run(args.run).parent
            try:
                outputs = render_views(run_dir, record)
            except OSError as exc:
                raise ConfigError(describe_os_error(
                    exc, f"{run_dir}", "copy the run to a writable directory and run `mechclaims report` there")) from None
            for out in outputs:
                print(out)
            return 0
        runs = {"A": (args.run_a, read_run(args.run_a)), "B": (args.run_b, read_run(args.run_b))}
        changes = compare(runs["A"][1], runs["B"][1])
    except MechclaimsError as exc:
        print(f"mechclaims: error: {exc}", file=sys.stderr)
        return 2
    for change in changes:
        print(change.describe())
    cut_short = [f"INCOMPLETE run {name}: {resolve_run(path)} stopped before every claim had a verdict "
                 "(run.complete false); rerun it to the end" for name, (path, record) in runs.items() if incomplete(record)]
    for line in cut_short:
        print(line)
    regressions = sum(c.regressed for c in changes)
    print(f"{len(changes)} changed, {regressions} regressed" + (f", {len(cut_short)} incomplete" if cut_short else ""))
    return 1 if regressions or cut_short else 0


def _merge(paths: list[Path], out: Path) -> int:
    """Write the merged run under ``out`` and exit as the single run would have."""
    from .report.claims_json import new_run_id, write_run
    from .shards import exit_status, merge, problems

    record = merge([(str(resolve_run(path)), read_run(path)) for path in paths])
    try:
        written = write_run(out, new_run_id(), record)
    except OSError as exc:
        raise ConfigError(describe_os_error(exc, f"{out}", "pass another --out directory")) from None
    lines = problems(record)
    for line in lines:
        print(line)
    print(f"merged {len(record['run']['shards'])} shards, {len(record['claims'])} claims, "
          f"{sum(line.startswith('UNEXPECTED') for line in lines)} unexpected: {written}")
    return exit_status(record)


def _list_targets(claims_dir: Path) -> int:
    """One block per target. Exit 1 when a target the project configures ([tool.mechclaims.targets.*]
    of the nearest pyproject.toml) has no weights; a built-in or a package's target without its
    weights (llama-3-8b on a laptop) is listed, not an error."""
    from . import registry
    from .expectations import own_dir, path_for
    from .loading import resolve
    from .targets.spec import TARGETS

    pyproject = registry.find_pyproject(Path.cwd())
    configured = set(registry.load_config(pyproject))
    own = own_dir(claims_dir, pyproject)  # an installed pack's claims, or no local claims directory
    missing = []
    for name, spec in TARGETS.items():
        print(f"{name}{' (gpu)' if spec.gpu else ''}: {spec.summary}")
        print(f"  registered by: {registry.source_of(name)}")
        print(f"  device, dtype: {spec.device}, {spec.dtype}" + (f"; boot options {dict(spec.boot_options)}"
                                                                 if spec.boot_options else ""), flush=True)
        try:  # a GGUF target is converted on its first listing, which can take a minute
            resolved = resolve(name, device="cpu")
            weights = f"present: {resolved.path}"
        except MechclaimsError as exc:
            weights = f"missing: {exc}"
            if name in configured:
                missing.append(name)
        expectations = path_for(claims_dir, name, own=own).resolve()
        print(f"  weights: {weights}")
        print(f"  expectations: {expectations}" + ("" if expectations.is_file() else " (none yet: run discover)"))
    if missing:
        print(f"{len(missing)} target(s) configured in {pyproject} have no weights: {', '.join(missing)}; "
              "fix their path (or hf_id) there", file=sys.stderr)
        return 1
    return 0


def _cache(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from . import cachedir
    from .targets.spec import default_cache_dir

    directory = args.dir or default_cache_dir() / "activations"
    if args.action == "info":
        inv = cachedir.inventory(directory)
        when = lambda t: datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")  # noqa: E731
        print(f"activation cache: {directory}" + ("" if directory.is_dir() else " (does not exist yet)"))
        print(f"  {inv.entries} entries, {cachedir.human_size(inv.size)}")
        for name, usage in inv.targets.items():
            print(f"  {name}: {usage.entries} entries, {cachedir.human_size(usage.size)}, "
                  f"oldest {when(usage.oldest)}, newest {when(usage.newest)}")
        return 0
    if args.action == "prune":
        result = cachedir.prune(
            directory,
            older_than=None if args.older_than is None else cachedir.parse_age(args.older_than, "--older-than"),
            max_size=None if args.max_size is None else cachedir.parse_size(args.max_size, "--max-size"))
    else:
        result = cachedir.clear(directory)
    print(f"{directory}: removed {result.removed} entries ({cachedir.human_size(result.freed)}); "
          f"{result.kept} left ({cachedir.human_size(result.size)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
