"""Headless Chromium (Debian's ``chromium``): pages rendered as a person's browser would.

Used by the tests that check the served pages (``/docs``, ``/redoc``) and by the script
that makes the docs' screenshots. ``make browser`` installs Chromium when it is missing.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from twotier.errors import TwotierError

FLAGS = ("--headless", "--no-sandbox", "--disable-background-networking", "--disable-gpu")
"""The flags of every run: no sandbox (containers), no traffic but the page's own."""


class BrowserError(TwotierError):
    """Chromium is missing or failed to render a page."""


def chromium() -> str:
    """The ``chromium`` executable.

    Raises:
        BrowserError: It is not installed (``make browser`` installs it).
    """
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise BrowserError("chromium is not installed: run `make browser` (Debian's chromium)")
    return found


def _run(args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="twotier-chromium-") as profile:
        command = [chromium(), *FLAGS, f"--user-data-dir={profile}", *args]
        try:
            return subprocess.run(
                command, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise BrowserError(f"chromium did not finish in {timeout_s:.0f} s: {args}") from exc


def dump_dom(url: str, wait_ms: int = 8000, timeout_s: float = 90.0) -> str:
    """The page's DOM after its scripts ran for ``wait_ms`` of virtual time.

    Raises:
        BrowserError: Chromium is missing or printed nothing.
    """
    done = _run([f"--virtual-time-budget={wait_ms}", "--dump-dom", url], timeout_s)
    if not done.stdout.strip():
        raise BrowserError(f"chromium rendered nothing for {url}: {done.stderr[-500:]}")
    return done.stdout


def screenshot(
    url: str,
    path: Path,
    size: tuple[int, int] = (1280, 900),
    wait_ms: int = 8000,
    timeout_s: float = 90.0,
) -> Path:
    """Save a PNG of the page at ``size`` (width, height) after ``wait_ms`` of scripts.

    Raises:
        BrowserError: Chromium is missing or wrote no image.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = [
        f"--window-size={size[0]},{size[1]}",
        f"--virtual-time-budget={wait_ms}",
        "--hide-scrollbars",
        f"--screenshot={path}",
        url,
    ]
    done = _run(args, timeout_s)
    if not path.exists() or path.stat().st_size == 0:
        raise BrowserError(f"chromium wrote no screenshot of {url}: {done.stderr[-500:]}")
    return path
