"""Spark sessions with the sparkfeed jar on the classpath.

`spark_session()` gives a local-mode session by default (the embedded default: no cluster
needed) and respects whatever `spark-submit` already chose (master, conf, jars). The jar is
located from the installed package, so the Python package and its jar cannot drift apart.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import uuid
from importlib import resources
from pathlib import Path

log = logging.getLogger(__name__)

_JAR_NAME = "sparkfeed.jar"
# How long Ctrl-C waits for the call that cancels a job group (a Connect server gone would hold
# it for pyspark's ten minutes of retries).
_CANCEL_WAIT_S = 30.0
# The thread's job group, as SparkContext.setJobGroup sets it (put back afterwards).
_GROUP_PROPERTIES = ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel")
_LOCAL_DEFAULTS = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": str(max(4, 2 * (os.cpu_count() or 2))),
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.driver.memory": "4g",
    "spark.sql.session.timeZone": "UTC",
}


def jar_path() -> str:
    """Absolute path of the bundled sparkfeed jar (for `spark-submit --jars`)."""
    path = Path(str(resources.files("sparkfeed") / "jars" / _JAR_NAME))
    if not path.is_file():
        raise FileNotFoundError(
            f"the sparkfeed jar is missing at {path}; build it with `make jar` "
            "(gradle jar, then copied into python/sparkfeed/jars/)")
    return str(path)


def _launched_by_spark_submit() -> bool:
    """True when this Python process was started by spark-submit (its JVM is already up)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def _spark_defaults_master() -> str | None:
    """`spark.master` from spark-defaults.conf (in $SPARK_CONF_DIR, else $SPARK_HOME/conf)."""
    conf_dir = os.environ.get("SPARK_CONF_DIR") or (
        os.path.join(os.environ["SPARK_HOME"], "conf") if "SPARK_HOME" in os.environ else None)
    path = os.path.join(conf_dir, "spark-defaults.conf") if conf_dir else None
    if not path or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.strip().replace("=", " ", 1).split(None, 1)
            if len(parts) == 2 and parts[0] == "spark.master":
                return parts[1].strip()
    return None


def configured_master() -> str | None:
    """The master that the JVM pyspark launches would take from its own configuration:
    `--master` in PYSPARK_SUBMIT_ARGS, else spark-defaults.conf's `spark.master`, else the
    MASTER environment variable (spark-submit's order); None when nothing sets one."""
    args = os.environ.get("PYSPARK_SUBMIT_ARGS", "").split()
    for i, arg in enumerate(args):
        if arg == "--master" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--master="):
            return arg.split("=", 1)[1]
    return _spark_defaults_master() or os.environ.get("MASTER") or None


def _with_jar(existing: str | None, jar: str) -> str:
    """A comma-separated jar list that holds `jar` once."""
    jars = [j for j in (existing or "").split(",") if j]
    if not any(Path(j).name == _JAR_NAME for j in jars):
        jars.append(jar)
    return ",".join(jars)


def configure_spark(builder, *, local_defaults: bool = False):
    """Add the sparkfeed jar (and, for local mode, sane defaults) to a `SparkSession.Builder`.

    Use it for a cluster session you build yourself:
    `spark = sparkfeed.configure_spark(SparkSession.builder.master("yarn")).getOrCreate()`.
    Options already set on the builder win over the defaults.
    """
    options = dict(builder._options)  # what the user already set; never overridden
    builder = builder.config("spark.jars", _with_jar(options.get("spark.jars"), jar_path()))
    if local_defaults:
        for key, value in _LOCAL_DEFAULTS.items():
            if key not in options:
                builder = builder.config(key, value)
        if "spark.pyspark.python" not in options:
            # Local Python workers must import sparkfeed (statistics job, UDFs): use this
            # interpreter. PySpark's workers read the environment variable, not the conf.
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    _python_from_conf(options.get("spark.pyspark.python"))
    return builder


def _python_from_conf(python: str | None) -> None:
    """Make `spark.pyspark.python`, set on a builder, the executors' Python, as spark-submit
    makes its `--conf spark.pyspark.python` (which wins over PYSPARK_PYTHON there). A context
    started from Python reads only the environment variable, so the conf was silently ignored:
    `spark_session(master="spark://...", conf={"spark.pyspark.python": venv_python})` ran the
    executors' `python3`, and a local session set so got no PYSPARK_PYTHON at all. Not for a
    context already running (its workers' Python is fixed)."""
    if not python:
        return
    from pyspark import SparkContext

    if SparkContext._active_spark_context is None:
        os.environ["PYSPARK_PYTHON"] = python


def spark_session(app_name: str = "sparkfeed", master: str | None = None, conf: dict | None = None):
    """The active Spark session, or a new one with the sparkfeed jar on its classpath.

    With no active session and no spark-submit, it starts `local[*]` with the UI off and shuffle
    partitions sized for the machine, unless a master is configured the ways pyspark's own JVM
    launch reads (`--master` in PYSPARK_SUBMIT_ARGS, `spark.master` in spark-defaults.conf, the
    MASTER environment variable): then that one, as `pyspark` would (so `sparkfeed index --spark`
    can run on a cluster). Under spark-submit, the master and conf given there win. With
    SPARK_REMOTE set (or `conf={"spark.remote": "sc://..."}`), a Spark Connect session, as
    pyspark makes it; an active Connect session is returned as it is.
    Example: `spark = sparkfeed.spark_session(); df = spark.range(10)`.
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        _warn_if_jar_missing(active)
        _apply_to_active(active, master, conf or {})
        return active
    remote = os.environ.get("SPARK_REMOTE") or (conf or {}).get("spark.remote")
    if remote:
        return _remote_session(app_name, master, conf or {}, remote)
    builder = SparkSession.builder.appName(app_name)
    submitted = _launched_by_spark_submit()
    configured = None if submitted or master is not None else configured_master()
    if master is not None:
        builder = builder.master(master)
    elif not submitted and configured is None:
        builder = builder.master("local[*]")
    for key, value in (conf or {}).items():
        builder = builder.config(key, str(value))
    local = not submitted and (master or configured or "local").startswith("local")
    builder = configure_spark(builder, local_defaults=local)
    spark = builder.getOrCreate()
    level = os.environ.get("SPARKFEED_SPARK_LOG_LEVEL")
    if level is None and spark.sparkContext.getConf().get("spark.log.level") is None:
        level = "WARN"  # (a level given as spark.log.level, by conf= or spark-submit, is kept)
    if level:
        spark.sparkContext.setLogLevel(level)
    log.info("Spark %s session %r on %s", spark.version, app_name, spark.sparkContext.master)
    return spark


def is_connect(spark) -> bool:
    """True for a Spark Connect session (it has no sparkContext)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def _remote_session(app_name: str, master: str | None, conf: dict, remote: str):
    """A Spark Connect session, as pyspark makes one for SPARK_REMOTE (`SPARK_REMOTE=sc://host
    python job.py`): the server has its jars and master, so none are set here."""
    from pyspark.sql import SparkSession

    if master is not None:
        raise ValueError(f"`master` should be None with Spark Connect (SPARK_REMOTE={remote!r}: "
                         f"the server has its own), but got master={master!r}")
    builder = SparkSession.builder.appName(app_name)
    for key, value in conf.items():
        builder = builder.config(key, str(value))
    spark = builder.getOrCreate()
    log.info("Spark %s Connect session %r on %s", spark.version, app_name, remote)
    return spark


def _apply_to_active(spark, master: str | None, conf: dict) -> None:
    """Set `conf` on the active session where Spark lets a running session change it (runtime
    SQL settings, as Spark's own getOrCreate does), and log a warning naming what cannot apply
    (`master`, static and core settings that differ). Before, both were ignored without a word."""
    ignored = []
    for key, value in conf.items():
        if spark.conf.get(key, None) == str(value):
            continue
        try:
            spark.conf.set(key, str(value))
        except Exception:  # static or core configuration: fixed once the session started
            ignored.append(key)
    running = None if is_connect(spark) else spark.sparkContext.master
    if master is not None and running is not None and master != running:
        ignored.insert(0, f"master={master!r} (it runs on {running!r})")
    if ignored:
        log.warning("a Spark session is already active, so spark_session() returns it without "
                    "%s; stop it first (spark.stop()) to start one with them", ", ".join(ignored))


def _warn_if_jar_missing(spark) -> None:
    """Log a warning when a reused session cannot see the sparkfeed data source (a Connect
    session's server jars cannot be seen from here: its server needs `--jars`)."""
    if is_connect(spark):
        return
    jars = spark.sparkContext.getConf().get("spark.jars", "")
    if _JAR_NAME not in jars:
        log.warning("the active Spark session has no sparkfeed jar on its classpath; "
                    "format('webdataset') will fail. Start it with --jars \"$(sparkfeed jar)\" "
                    "or sparkfeed.configure_spark(builder).")


@contextlib.contextmanager
def jobs_cancelled_on_interrupt(spark, what: str = "sparkfeed.write"):
    """Inside: the Spark jobs this thread starts are in a job group of their own, described as
    `what`, and Ctrl-C cancels it (the context gives `cancel`, which `writecheck.job_failure_named`
    calls first). pyspark's SIGINT handler calls cancelAllJobs on the py4j connection that the
    blocked call holds, which fails ('reentrant call'), so a write job ran on after the
    KeyboardInterrupt and committed, and an index job read on. Over Spark Connect (no
    SparkContext) the client interrupts its operation itself."""
    if is_connect(spark):  # yielded outside an `except`: an error inside keeps its own __context__
        yield lambda: None
        return
    sc = spark.sparkContext
    group = f"sparkfeed-{uuid.uuid4().hex}"
    before = [sc.getLocalProperty(k) for k in _GROUP_PROPERTIES]
    sc.setJobGroup(group, what, interruptOnCancel=True)
    cancelled = []

    def cancel() -> None:
        if not cancelled:
            cancelled.append(group)  # from a thread of its own: a py4j connection of its own
            t = threading.Thread(target=_cancel_group, args=(sc, group, what), daemon=True)
            t.start()
            t.join(_CANCEL_WAIT_S)
    try:
        yield cancel
    except KeyboardInterrupt:
        cancel()
        raise
    finally:
        with contextlib.suppress(Exception):  # the interrupted thread's connection may be gone
            for key, value in zip(_GROUP_PROPERTIES, before):
                sc.setLocalProperty(key, value)


def _cancel_group(sc, group: str, what: str) -> None:
    try:
        sc.cancelJobGroup(group)
    except Exception as exc:  # said, never raised over the KeyboardInterrupt
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        log.warning("could not cancel the Spark jobs of the interrupted %s (%s)", what, first)
