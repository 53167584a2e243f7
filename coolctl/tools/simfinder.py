"""How `coolctl sim inject` finds the simulation an operator means.

Each running `coolctl demo` or `coolctl sim serve` advertises itself in a file of its own, in a
private directory of its own (one per run, not one per user, so that a second simulation never
overwrites the first's): its fault-injection URL and the bearer token that endpoint requires,
its process id and, for the demo, the control socket of the daemon it runs. The file is 0600,
created exclusively without following links, in a 0700 directory inside one that must be this
user's own and closed to others (`control_server.private_directory`).

`sim inject` then takes, in this order: `--sim URL`; the simulation whose daemon listens on
`$COOLCTL_SOCKET`; the only simulation running. With more than one and nothing to tell them
apart it refuses, and lists them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from coolctl.simulators.control_server import private_directory

ADVERT_NAME = "sim.json"


@dataclass(frozen=True, slots=True)
class Advert:
    """One running simulation, as it advertised itself."""

    control_url: str
    pid: int
    socket: str | None  # the demo's daemon's control socket; None for `sim serve`
    path: Path
    token: str | None = None  # the bearer token its control endpoint requires

    def describe(self) -> str:
        owner = f" (daemon socket {self.socket})" if self.socket else " (sim serve)"
        return f"{self.control_url} pid {self.pid}{owner}"


def adverts_root() -> Path:
    """The directory the per-run directories live in: $XDG_RUNTIME_DIR/coolctl-sim, else
    a per-user directory in the temporary directory."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "coolctl-sim"
    return Path(tempfile.gettempdir()) / f"coolctl-sim-{os.getuid()}"


def write_advert(directory: Path, document: dict[str, object]) -> Path:
    """Create the advert file, 0600, refusing to follow or replace anything already there.

    The one place the file is written, so that how it is created can be hardened in one go.
    """
    path = directory / ADVERT_NAME
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(document, handle)
        handle.write("\n")
    return path


@contextlib.contextmanager
def advertised(
    control_url: str | None, socket: Path | None = None, token: str | None = None
) -> Iterator[Path | None]:
    """Advertise a running simulation for as long as the block runs; a private per-run
    directory (0700) holds the file, and both go when the block ends. If it cannot be
    written, `sim inject` needs `--sim URL` (and `$COOLCTL_SIM_TOKEN`): said on stderr."""
    if control_url is None:
        yield None
        return
    try:
        root = private_directory(adverts_root())
        directory = Path(tempfile.mkdtemp(prefix="run-", dir=root))  # 0700, ours alone
    except (OSError, ValueError) as exc:
        print(f"coolctl sim inject will need --sim {control_url}: {exc}", file=sys.stderr)
        yield None
        return
    try:
        document: dict[str, object] = {
            "control_url": control_url,
            "token": token,
            "pid": os.getpid(),
            "socket": str(socket) if socket is not None else None,
        }
        yield write_advert(directory, document)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_adverts(root: Path | None = None) -> list[Advert]:
    """Every simulation advertised under `root` whose process still runs."""
    found: list[Advert] = []
    for path in sorted((root or adverts_root()).glob(f"*/{ADVERT_NAME}")):
        try:
            descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(descriptor, encoding="utf-8") as handle:
                document = json.load(handle)
            url, pid = str(document["control_url"]), int(document["pid"])
            socket, token = document.get("socket"), document.get("token")
        except (OSError, ValueError, KeyError, TypeError):
            continue  # half-written, a link, or not ours: not a simulation to offer
        if _alive(pid):
            found.append(Advert(url, pid, str(socket) if socket else None, path, token or None))
    return found


def choose(adverts: list[Advert], socket: str | None) -> Advert:
    """The simulation meant: the one behind `socket`'s daemon, else the only one; LookupError
    (its message says what to do) when none or more than one could be meant."""
    if socket:
        behind = [a for a in adverts if a.socket and Path(a.socket) == Path(socket)]
        if len(behind) == 1:
            return behind[0]
    if len(adverts) == 1:
        return adverts[0]
    if not adverts:
        raise LookupError(
            "no running simulation found; start `coolctl demo` or `coolctl sim serve`, or pass"
            " --sim URL (its `control http://...` line)"
        )
    listed = "; ".join(a.describe() for a in adverts)
    hint = (
        f"none runs the daemon of COOLCTL_SOCKET={socket}"
        if socket
        else "set COOLCTL_SOCKET to the demo's socket"
    )
    raise LookupError(
        f"{len(adverts)} simulations are running ({listed}); {hint}, or pass --sim URL"
    )
