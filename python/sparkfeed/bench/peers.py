"""Peers that cannot share sparkfeed's environment live in virtual environments of their own.

    python -m sparkfeed.bench.peers install [--dir build/peers] [--only petastorm,streaming]
    python -m sparkfeed.bench.peers status  [--dir build/peers]

Petastorm 0.13 needs `pyarrow<13` and `numpy<2`; mosaicml-streaming pulls a CUDA torchvision
that cannot load beside the CPU torch. Each gets `build/peers/<name>/` (a `python -m venv`),
and its bench runner runs as a subprocess with that venv's python and a script from
`peer_scripts/`, so the benchmark process never imports the peer. A venv that is absent makes
the row "skipped" with the install command. `SPARKFEED_BENCH_PEERS` overrides the directory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

DEFAULT_DIR = os.path.join("build", "peers")
INSTALL_HINT = "run `python -m sparkfeed.bench.peers install`"

# name -> (pip install steps, packages to uninstall afterwards, import check)
PEERS: dict[str, dict] = {
    "petastorm": {
        # torch first, alone: asked for in one resolve with petastorm, pip reports a conflict
        # between torch==2.13.0 and the local torch-2.13.0+cpu wheel; pandas<2.3 for numpy<2
        "steps": [["torch==2.13.0"], ["petastorm==0.13.*", "pyarrow<13", "numpy<2", "pandas<2.3"]],
        "uninstall": [],
        "check": "import petastorm, pyarrow, numpy, torch; from petastorm.pytorch import BatchedDataLoader; "
                 "print('petastorm', petastorm.__version__, 'pyarrow', pyarrow.__version__, "
                 "'numpy', numpy.__version__, 'torch', torch.__version__)",
    },
    "streaming": {
        "steps": [["torch==2.13.0"], ["mosaicml-streaming", "torch==2.13.0", "pyarrow"]],
        # torchvision from PyPI is a CUDA build that cannot load beside the CPU torch ("operator
        # torchvision::nms does not exist"); `import streaming` needs two of its names, so the
        # check (and the peer script) registers `peer_scripts/_torchvision_stub.py` first
        "uninstall": ["torchvision"],
        "check": "import _torchvision_stub; _torchvision_stub.install(); "
                 "import streaming, torch, pyarrow; from streaming import MDSWriter, StreamingDataset; "
                 "print('streaming', streaming.__version__, 'torch', torch.__version__)",
    },
}


def peers_dir(path: str | None = None) -> str:
    if path:
        return os.path.abspath(path)
    env = os.environ.get("SPARKFEED_BENCH_PEERS")
    if env:
        return os.path.abspath(env)
    return os.path.abspath(_repo_default())


def _repo_default() -> str:
    """`build/peers` under the repository when sparkfeed is an editable checkout, else the cwd's."""
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.abspath(os.path.join(here, "..", "..", ".."))
    if os.path.exists(os.path.join(root, "python", "sparkfeed")):
        return os.path.join(root, DEFAULT_DIR)
    return DEFAULT_DIR


def python_of(name: str, directory: str | None = None) -> str | None:
    """The peer venv's python, or None when it is not installed (no venv or no `.ok` marker)."""
    venv = os.path.join(peers_dir(directory), name)
    exe = os.path.join(venv, "bin", "python")
    return exe if os.path.exists(exe) and os.path.exists(os.path.join(venv, ".ok")) else None


def script(name: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_scripts", name)


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def install(name: str, directory: str | None = None) -> str:
    spec = PEERS[name]
    venv = os.path.join(peers_dir(directory), name)
    ok = os.path.join(venv, ".ok")
    if os.path.exists(ok):
        os.remove(ok)
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", venv])
    py = os.path.join(venv, "bin", "python")
    for step in spec["steps"]:
        _run([py, "-m", "pip", "install", "--quiet", *step])
    for pkg in spec["uninstall"]:
        has = subprocess.run([py, "-m", "pip", "show", pkg], capture_output=True).returncode == 0
        if has:
            _run([py, "-m", "pip", "uninstall", "-y", pkg])
    out = subprocess.run([py, "-c", spec["check"]], capture_output=True, text=True,
                         cwd=os.path.dirname(script("_peerlib.py")))
    if out.returncode != 0:
        raise RuntimeError(f"{name}: the import check failed in {venv}:\n{out.stderr[-2000:]}")
    print(out.stdout.strip(), flush=True)
    with open(ok, "w") as f:
        f.write(out.stdout)
    return venv


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparkfeed.bench.peers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["install", "status"])
    parser.add_argument("--dir", default=None, help=f"where the venvs go (default {DEFAULT_DIR} "
                                                    "under the checkout, or $SPARKFEED_BENCH_PEERS)")
    parser.add_argument("--only", default=",".join(PEERS), help="comma-separated peers")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        parser.error(f"unknown peer(s) {unknown}; choose from {list(PEERS)}")
    failed = 0
    for name in names:
        if args.action == "status":
            print(f"{name}: {python_of(name, args.dir) or 'not installed (' + INSTALL_HINT + ')'}")
            continue
        try:
            print(f"installed {name} in {install(name, args.dir)}")
        except (subprocess.CalledProcessError, RuntimeError) as exc:
            print(f"FAILED to install {name}: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
