"""FerretDB v1 with the SQLite backend: the local MongoDB-wire online store.

The binary is built once from the Go module proxy into
``<cache>/ferretdb/<version>/ferretdb``; data lives in ``<data_dir>/ferretdb/``.
FerretDB listens only on loopback, its debug HTTP listener is disabled and its
telemetry is off, so it sends nothing beyond 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from twotier.infra.service import Service, StackError, mongo_ping
from twotier.progress import Progress, quiet

MODULE = "github.com/FerretDB/FerretDB"


class FerretDBService(Service):
    """FerretDB v1 (``--handler=sqlite``) on ``settings.ferretdb.host:port``."""

    name = "ferretdb"

    # -- locations ---------------------------------------------------------

    @property
    def version_dir(self) -> Path:
        return self.cache_dir / self.settings.ferretdb.version

    @property
    def binary(self) -> Path:
        """The built ``ferretdb`` executable."""
        return self.version_dir / "ferretdb"

    @property
    def ports(self) -> Sequence[tuple[str, int]]:
        return [(self.settings.ferretdb.host, self.settings.ferretdb.port)]

    @property
    def endpoint(self) -> str:
        return f"mongodb://{self.settings.ferretdb.host}:{self.settings.ferretdb.port}/"

    def describe(self) -> str:
        return (
            f"FerretDB {self.settings.ferretdb.version} at {self.endpoint}\n"
            "  v1 on SQLite; licence Apache-2.0\n"
            "  scans for $in and updates; no change streams or transactions"
        )

    # -- install -------------------------------------------------------------

    def install(self, progress: Progress = quiet) -> None:
        """Build the FerretDB binary from the Go module proxy; a no-op when it exists.

        Raises:
            StackError: Go is missing, or the download or build failed.
        """
        if self.binary.exists():
            return
        go = shutil.which("go")
        if go is None:
            raise StackError(
                self.name,
                "the Go toolchain (go) is not on PATH, it is needed once to build FerretDB",
                "install Go >= 1.24 (https://go.dev/dl/) and put its bin folder on PATH",
            )
        version = self.settings.ferretdb.version
        self.version_dir.mkdir(parents=True, exist_ok=True)
        log = self.version_dir / "build.log"
        env = {**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
        started = time.monotonic()

        progress(f"{self.name}: downloading {MODULE}@{version} from the Go module proxy")
        out = self._run([go, "mod", "download", "-json", f"{MODULE}@{version}"], env, log, None)
        try:
            source = Path(json.loads(out)["Dir"])
        except (ValueError, KeyError) as exc:
            raise StackError(
                self.name,
                f"`go mod download` gave no module folder for {MODULE}@{version}",
                f"check the version in twotier.yaml (ferretdb.version) and read {log}",
                log,
            ) from exc

        build_dir = self.version_dir / "src"
        if build_dir.exists():
            _make_writable(build_dir)
            shutil.rmtree(build_dir)
        shutil.copytree(source, build_dir)
        _make_writable(build_dir)
        (build_dir / "build" / "version" / "version.txt").write_text(version + "\n")

        progress(f"{self.name}: compiling {version} (takes a few minutes on first install)")
        partial = self.binary.with_suffix(".partial")
        self._run(
            [go, "build", "-trimpath", "-o", str(partial), "./cmd/ferretdb"], env, log, build_dir
        )
        partial.rename(self.binary)
        shutil.rmtree(build_dir, ignore_errors=True)
        progress(f"{self.name}: built {self.binary} in {time.monotonic() - started:.0f} s")

    def _run(self, args: list[str], env: dict[str, str], log: Path, cwd: Path | None) -> str:
        """Run a Go command, appending its stderr to the build log; return its stdout."""
        with open(log, "a") as err:
            err.write(f"$ {' '.join(args)}\n")
            err.flush()
            result = subprocess.run(
                args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err, text=True, check=False
            )
        if result.returncode != 0:
            raise StackError(
                self.name,
                f"`{' '.join(args[:3])}` failed with exit code {result.returncode}",
                f"read {log}; check the network to proxy.golang.org and the Go version",
                log,
            )
        return result.stdout

    # -- run -------------------------------------------------------------------

    def command(self) -> list[str]:
        cfg = self.settings.ferretdb
        return [
            str(self.binary),
            f"--listen-addr={cfg.host}:{cfg.port}",
            "--handler=sqlite",
            f"--sqlite-url=file:{self.data_dir}/",
            f"--state-dir={self.data_dir}",
            "--telemetry=disable",
            "--debug-addr=-",
            "--log-level=info",
        ]

    def healthy(self) -> bool:
        """A ``ping`` command over the MongoDB wire protocol."""
        return mongo_ping(self.endpoint)


def _make_writable(root: Path) -> None:
    """Add the owner's write bit everywhere (the Go module cache is read-only)."""
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
