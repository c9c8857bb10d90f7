"""The `sparkfeed` command line: `inspect` a dataset, print the `jar` path, and (when installed)
`bench`.

Subcommands register through `_COMMANDS`: name -> (add its parser, run it). A module elsewhere
adds its own with `add_parser(subparsers)`, which creates a subparser and sets its handler with
`parser.set_defaults(func=fn)`, where `fn(args) -> int` is the exit code. `_OPTIONAL` names such
modules (`sparkfeed.bench.cli`); one is imported only when its command is asked for or the
top-level help is printed, so `sparkfeed inspect` never pays for the benchmark's imports (a
word that names no command loads them all, so the error lists every command). Errors sparkfeed
raises on purpose, and bad arguments the API refuses (`UsageError`, worded with the flags), are
one line on stderr and exit code 2, never a traceback; any other exception keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import decimal
import importlib
import logging
import statistics
import sys
from collections.abc import Callable

from .errors import SparkfeedError

__all__ = ["main", "format_manifest", "UsageError", "usage_error", "flags_named"]

log = logging.getLogger(__name__)
# command -> module whose add_parser(subparsers) adds it, imported only when needed
_OPTIONAL = {"index": "sparkfeed.index.cli", "bench": "sparkfeed.bench.cli"}


class UsageError(Exception):
    """A bad command line: `main` prints it as one line and exits with 2, as argparse does."""


def usage_error(exc: ValueError, flags: dict[str, str]) -> UsageError | None:
    """The command line's wording of an API argument check, or None for any other error.

    Argument checks raise ValueErrors that start with the argument's name in backticks
    ("`batch_size` should be a positive integer, but got batch_size=0"); one naming an argument
    in `flags` (Python name -> flag) is reworded with the flags ("--batch-size should be a
    positive integer, but got --batch-size 0"). pyarrow's ValueErrors and anything else are not
    argument errors and keep their traceback."""
    import pyarrow as pa

    text = str(exc)
    if isinstance(exc, pa.ArrowException) or not any(text.startswith(f"`{n}`") for n in flags):
        return None
    for name, flag in flags.items():
        text = (text.replace(f"`{name}`", flag).replace(f"{name}=None", f"no {flag}")
                .replace(f"{name}=", f"{flag} "))
    return UsageError(text)


@contextlib.contextmanager
def flags_named(flags: dict[str, str]):
    """Within: an API argument check (a ValueError `usage_error` recognises) is raised as the
    `UsageError` naming the flags; other errors pass unchanged."""
    try:
        yield
    except ValueError as exc:
        usage = usage_error(exc, flags)
        if usage is None:
            raise
        raise usage from exc


# ---------------------------------------------------------------- inspect

def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _spread(values: list[int]) -> str:
    if not values:
        return "none"
    med = statistics.median(values)
    med_text = f"{int(med):,}" if float(med).is_integer() else f"{med:,.1f}"
    return f"min {min(values):,}, median {med_text}, max {max(values):,}"


def _table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: (indent + "  ".join(str(v).ljust(w) for v, w in zip(r, widths))).rstrip()  # noqa: E731
    return [fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]


def _show(value) -> str:
    if value is None:
        return "?"
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:37] + "...")
    return str(value)


def _scalar(type_string: str) -> bool:
    """A column type that statistics are kept for: not lists, structs and maps, and not binary
    (sparkfeed.write keeps none for binary columns, images and the like, on purpose)."""
    import pyarrow as pa

    from .arrowtypes import arrow_type

    t = arrow_type(type_string)
    binary = t is not None and (pa.types.is_binary(t) or pa.types.is_large_binary(t)
                                or pa.types.is_fixed_size_binary(t) or pa.types.is_binary_view(t))
    return t is not None and not pa.types.is_nested(t) and not binary


def _typed(m, name: str, value):
    """A statistic as it compares: decimals (text in the manifest) as numbers."""
    if value is not None and m.column(name).type.startswith("decimal"):
        return decimal.Decimal(value)
    return value


def _dataset_range(m, name: str) -> tuple:
    """(min of mins, max of maxes, total nulls) of column `name` over every shard (None: unknown).
    Decimal statistics compare as numbers (`_typed`)."""
    los, his, nulls = [], [], 0
    unknown_range = False
    for s in m.shards:
        st = s.stats.get(name)
        if st is None:
            unknown_range, nulls = unknown_range or s.num_samples > 0, None
            continue
        nulls = None if nulls is None or st.null_count is None else nulls + st.null_count
        if st.min is not None and st.max is not None:
            los.append(_typed(m, name, st.min))
            his.append(_typed(m, name, st.max))
        elif st.null_count != s.num_samples:  # values there, range unknown
            unknown_range = True
    if unknown_range or not los:
        return None, None, nulls
    return min(los), max(his), nulls


def format_manifest(m, shards: int = 0) -> str:
    """A human-readable summary of a manifest, as `sparkfeed inspect` prints it."""
    created = ", ".join(f"{k} {v}" for k, v in m.created_by.items()) or "unknown"
    per_shard = [s.num_samples for s in m.shards]
    lines = [f"dataset     {m.root}",
             f"format      {m.format}",
             f"created by  {created}",
             f"samples     {m.num_samples:,}",
             f"bytes       {_human_bytes(m.num_bytes)} ({m.num_bytes:,} bytes)",
             f"shards      {len(m.shards):,} (samples per shard: {_spread(per_shard)})"]
    if m.format == "parquet":
        groups = [rg.num_samples for s in m.shards for rg in (s.row_groups or ())]
        lines.append(f"row groups  {len(groups):,} (samples per row group: {_spread(groups)})")
    else:
        members = sorted({e for s in m.shards for e in (s.members or ())})
        lines.append(f"members     {', '.join(members) or 'none'}")
    lines += ["", "schema", *_table(["name", "type", "codec", "member"],
                                    [[c.name, c.type, c.codec or "", c.member or ""] for c in m.schema])]
    stat_names = [c.name for c in m.schema if any(c.name in s.stats for s in m.shards)]
    if stat_names:
        rows = [[n, *(_show(v) for v in _dataset_range(m, n))] for n in stat_names]
        lines += ["", "statistics (whole dataset)", *_table(["column", "min", "max", "nulls"], rows)]
    bare = [c.name for c in m.schema if c.name not in stat_names and not c.codec and _scalar(c.type)]
    if bare and m.shards:  # a writer left them out (parquet-mr does past 4 KiB values)
        lines.append(f"no statistics in any shard (a filter on them prunes nothing): {', '.join(bare)}")
    if shards > 0:
        rows = [[s.path, f"{s.num_samples:,}", _human_bytes(s.num_bytes),
                 "-" if s.row_groups is None else str(len(s.row_groups)),
                 " ".join(f"{k}={_show(_typed(m, k, v.min))}..{_show(_typed(m, k, v.max))}"
                          for k, v in list(s.stats.items())[:3])]
                for s in m.shards[:shards]]
        lines += ["", f"first {len(rows)} of {len(m.shards)} shards",
                  *_table(["path", "samples", "bytes", "row groups", "stats (first 3 columns)"], rows)]
    return "\n".join(lines)


def _add_inspect(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "inspect", help="summarise a dataset from its manifest",
        description="Read a dataset's manifest (_sparkfeed.json) and summarise it: format, "
                    "samples, bytes, shard and row-group sizes, schema with codecs, and each "
                    "column's min/max/null statistics over the whole dataset. Only the manifest "
                    "is read, never the shards. Parquet or Delta data without a manifest (a "
                    "directory, a glob, one file) is indexed in memory from its footers or log, "
                    "as DataLoader does.",
        epilog="examples:\n  sparkfeed inspect ds/\n  sparkfeed inspect s3://bucket/ds --shards 10\n"
               "  sparkfeed inspect ds/ --json | jq .num_samples\n"
               "  sparkfeed inspect lake/table/ --version 3",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="dataset root: a local path or an fsspec URL (s3://, gs://, hdfs://, "
                                "...); for Parquet without a manifest also a glob or one file")
    p.add_argument("--json", action="store_true", help="print the manifest JSON and nothing else")
    p.add_argument("--shards", type=_count, default=0, metavar="N",
                   help="also list the first N shards with their statistics (default 0)")
    p.add_argument("--version", metavar="N", default=None,
                   help="a Delta table's version (an integer) or timestamp (ISO-8601): that "
                        "version, indexed in memory from the table's log (default: its manifest, "
                        "else the latest version)")
    return p


def _count(text: str) -> int:
    """An argparse type: an integer >= 0."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"should be an integer >= 0, but got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"should be an integer >= 0, but got {n}")
    return n


def _run_inspect(args) -> int:
    from .errors import ManifestError
    from .index import open_manifest
    from .manifest import MANIFEST_NAME, read_manifest

    if not args.path.strip():  # storage resolves "" to the file system's root, "/"
        raise UsageError("path should be a dataset root, a manifest (.json), a glob or a file, but "
                         "got an empty string")
    if args.version is not None:
        return _show_manifest(args, _delta_at(args), None)
    try:
        m, note = read_manifest(args.path), None
    except ManifestError:  # Parquet or Delta without one: indexed in memory, as the loader does
        m, _ = open_manifest(args.path)
        save = f"'{args.path}' --manifest DIR" if m.data_root is not None else args.path
        note = (f"note        no {MANIFEST_NAME}: indexed in memory from the files, as "
                f"DataLoader does (`sparkfeed index {save}` saves it)")
    return _show_manifest(args, m, note)


def _delta_at(args):
    """`--version`: the Delta table at that version, indexed in memory (never its saved
    manifest, which holds the version it was indexed at)."""
    from .index import in_memory
    from .index.delta import delta_version

    with flags_named({"version": "--version", "path": "PATH"}):
        return in_memory(args.path, delta_version(args.version))


def _show_manifest(args, m, note) -> int:
    if args.json:
        print(m.to_json(indent=1))
    else:
        print("\n".join(filter(None, [note, format_manifest(m, shards=args.shards)])))
    return 0


# ---------------------------------------------------------------- jar

def _add_jar(sub) -> argparse.ArgumentParser:
    return sub.add_parser(
        "jar", help="print the path of the bundled Spark jar",
        description="Print the absolute path of the sparkfeed jar bundled with this package, for "
                    "spark-submit.",
        epilog='example:\n  spark-submit --jars "$(sparkfeed jar)" examples/preprocess_images.py',
        formatter_class=argparse.RawDescriptionHelpFormatter)


def _run_jar(args) -> int:
    from .session import jar_path

    print(jar_path())
    return 0


# ---------------------------------------------------------------- wiring

_COMMANDS: dict[str, tuple[Callable, Callable]] = {
    "inspect": (_add_inspect, _run_inspect),
    "jar": (_add_jar, _run_jar),
}


def _requested(argv: list[str]) -> str | None:
    """The subcommand named in `argv` (None for top-level help or none), skipping global options."""
    rest = list(argv)
    while rest:
        token = rest.pop(0)
        if token == "--log-level":
            rest = rest[1:]
        elif not token.startswith("-"):
            return token
    return None


def _add_optional(sub, argv: list[str]) -> None:
    """Let optional modules (`sparkfeed.bench.cli`) add their subcommands, if importable."""
    wanted = _requested(argv)
    known = wanted in _COMMANDS or wanted in _OPTIONAL
    for command, name in _OPTIONAL.items():
        if known and wanted != command:
            continue  # another command runs: do not pay for this module's imports
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # not installed: no such subcommand
            _add_broken(sub, command, name, exc)
        except Exception as exc:  # noqa: BLE001 - a broken extra must not break `inspect`
            _add_broken(sub, command, name, exc)
        else:
            module.add_parser(sub)


def _add_broken(sub, command: str, module: str, exc: Exception) -> None:
    p = sub.add_parser(command, help=f"(unavailable: {type(exc).__name__})", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)

    def run(args) -> int:
        raise SparkfeedError(f"`sparkfeed {command}` is unavailable: importing {module} failed "
                             f"with {type(exc).__name__}: {exc}")

    p.set_defaults(func=run)


def _parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparkfeed",
        description="sparkfeed: Spark writes sharded Parquet or WebDataset plus a manifest; "
                    "PyTorch streams it. This command inspects datasets, indexes data other tools "
                    "wrote (Parquet, WebDataset tars, Delta tables) and helps run Spark jobs.",
        epilog="examples:\n  sparkfeed inspect ds/\n  sparkfeed inspect ds/ --json\n"
               "  sparkfeed index lake/events/\n"
               "  sparkfeed --log-level INFO index lake/table/ --version 3 --manifest work/t3.json\n"
               '  spark-submit --jars "$(sparkfeed jar)" job.py\n\n'
               "Run `sparkfeed COMMAND --help` for the options of one command.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_log_level(parser, "WARNING")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (add, run) in _COMMANDS.items():
        add(sub).set_defaults(func=run)
    _add_optional(sub, argv)
    for command in sub.choices.values():  # `sparkfeed index ... --log-level INFO` works too
        _add_log_level(command, argparse.SUPPRESS)
    return parser


def _add_log_level(parser: argparse.ArgumentParser, default) -> None:
    """--log-level, before the command (default WARNING) or after it (default: the one before)."""
    parser.add_argument("--log-level", default=default, type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="how much sparkfeed logs to stderr (default WARNING); before or after "
                             "the command")


def main(argv: list[str] | None = None) -> int:
    """Run the `sparkfeed` command line; returns the exit code (2 for errors)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `sparkfeed inspect ... | head`
        return 0
    except (SparkfeedError, OSError, UsageError) as exc:
        print(f"sparkfeed {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # `python -m sparkfeed.cli`: the package's module, whose UsageError
    sys.exit(importlib.import_module("sparkfeed.cli").main())  # the subcommands raise
