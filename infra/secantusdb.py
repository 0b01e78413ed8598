"""SecantusDB ``secantusd-rs``: the default local MongoDB-wire online store.

A single-node MongoDB-compatible server on WiredTiger, with real ``_id`` indexes,
change streams and transactions. It is built once from crates.io with
``cargo +<toolchain> install secantus-mdb`` into ``<cache>/secantusdb/<version>/``
(its crates declare a Rust newer than stable, so a nightly toolchain builds it;
the build compiles the bundled WiredTiger with cmake and the C compiler) and kept
there for every clone and CI run. Data lives in ``<data_dir>/secantusdb/data``.

SecantusDB is GPL-2.0-only; twotier runs it as a separate server process and talks
to it over the wire protocol only, never linking it.

Durability: ``--sync-on-commit`` (``secantusdb.sync_on_commit``, on by default)
fsyncs the WiredTiger log on every commit. Without it, a kill -9 right after an
acknowledged write loses that write, even with write concern ``j: true``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from twotier.infra.service import Service, StackError, mongo_ping
from twotier.progress import Progress, quiet

CRATE = "secantus-mdb"
BINARY = "secantusd-rs"
LICENCE = "GPL-2.0-only, run as a separate process"


class SecantusDBService(Service):
    """``secantusd-rs`` on ``settings.secantusdb.host:port``, single node, on loopback."""

    name = "secantusdb"

    # -- locations ---------------------------------------------------------

    @property
    def version_dir(self) -> Path:
        return self.cache_dir / self.settings.secantusdb.version

    @property
    def binary(self) -> Path:
        """The installed ``secantusd-rs`` executable."""
        return self.version_dir / "bin" / BINARY

    @property
    def storage_dir(self) -> Path:
        """The WiredTiger home of the server (reopened intact across restarts)."""
        return self.data_dir / "data"

    @property
    def ports(self) -> Sequence[tuple[str, int]]:
        return [(self.settings.secantusdb.host, self.settings.secantusdb.port)]

    @property
    def endpoint(self) -> str:
        return f"mongodb://{self.settings.secantusdb.host}:{self.settings.secantusdb.port}/"

    def describe(self) -> str:
        cfg = self.settings.secantusdb
        sync = "on" if cfg.sync_on_commit else "OFF (a kill -9 can lose acknowledged writes)"
        return (
            f"SecantusDB {cfg.version} at {self.endpoint}\n"
            f"  secantusd-rs on WiredTiger; licence {LICENCE}\n"
            f"  sync on commit: {sync}"
        )

    # -- install -------------------------------------------------------------

    def install(self, progress: Progress = quiet) -> None:
        """Build ``secantusd-rs`` from crates.io with cargo; a no-op when it exists.

        The build folder is kept in the cache, so an interrupted build resumes.

        Raises:
            StackError: cargo or the toolchain is missing, or the build failed.
        """
        if self.binary.exists():
            return
        cargo = shutil.which("cargo")
        if cargo is None:
            raise StackError(
                self.name,
                "cargo is not on PATH; it is needed once to build SecantusDB from crates.io",
                "install Rust with rustup (https://rustup.rs) and the nightly toolchain "
                "(`rustup toolchain install nightly`), or set stack.online_server: ferretdb",
            )
        cfg = self.settings.secantusdb
        self.version_dir.mkdir(parents=True, exist_ok=True)
        log = self.version_dir / "build.log"
        env = {**os.environ, "CARGO_TARGET_DIR": str(self.cache_dir / "target")}
        args = [
            cargo,
            f"+{cfg.toolchain}",
            "install",
            CRATE,
            "--version",
            cfg.version,
            "--ignore-rust-version",
            "--locked",
            "--root",
            str(self.version_dir),
        ]
        progress(
            f"{self.name}: building {CRATE} {cfg.version} with cargo +{cfg.toolchain} "
            f"(once, about 12 minutes on 2 cores; log: {log})"
        )
        started = time.monotonic()
        with open(log, "a") as out:
            out.write(f"$ {' '.join(args)}\n")
            out.flush()
            result = subprocess.run(
                args, env=env, stdout=out, stderr=subprocess.STDOUT, check=False
            )
        if result.returncode != 0 or not self.binary.exists():
            raise StackError(
                self.name,
                f"`cargo +{cfg.toolchain} install {CRATE}` failed with exit code "
                f"{result.returncode}",
                f"read {log}; check that `rustup toolchain list` shows {cfg.toolchain}, that "
                "cmake and a C compiler are installed and crates.io is reachable",
                log,
            )
        shutil.rmtree(self.cache_dir / "target", ignore_errors=True)
        progress(f"{self.name}: built {self.binary} in {time.monotonic() - started:.0f} s")

    # -- run -------------------------------------------------------------------

    def prepare(self, progress: Progress = quiet) -> None:
        """Write an empty config file, so no ``secantusd.toml`` elsewhere is picked up."""
        (self.data_dir / "secantusd.toml").write_text(
            "# twotier passes every setting as a flag; this file stops auto-discovery.\n"
        )

    def command(self) -> list[str]:
        cfg = self.settings.secantusdb
        args = [
            str(self.binary),
            f"--config={self.data_dir / 'secantusd.toml'}",
            f"--host={cfg.host}",
            f"--port={cfg.port}",
            f"--storage-path={self.storage_dir}",
            f"--cache-size={cfg.cache_size}",
            f"--log-file-max={cfg.log_file_max}",
            "--log-level=INFO",
        ]
        if cfg.sync_on_commit:
            args.append("--sync-on-commit")
        return args

    def healthy(self) -> bool:
        """A ``ping`` command over the MongoDB wire protocol."""
        return mongo_ping(self.endpoint)
