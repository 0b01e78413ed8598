"""Fetch jars and their runtime dependencies from Maven Central into a cache folder."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from twotier.infra.service import StackError
from twotier.progress import Progress, quiet

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>twotier</groupId>
  <artifactId>{name}-fetch</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
{deps}
  </dependencies>
</project>
"""

_DEP = """    <dependency>
      <groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version>
    </dependency>"""


def fetch_jars(
    component: str,
    coordinates: Sequence[str],
    dest: Path,
    *,
    transitive: bool = True,
    progress: Progress = quiet,
) -> list[Path]:
    """Copy ``group:artifact:version`` jars (and their runtime deps) into ``dest``.

    A ``.complete`` marker makes the second call a no-op that downloads nothing.

    Raises:
        StackError: Maven is missing or the download failed.
    """
    marker = dest / ".complete"
    wanted = "\n".join(sorted(coordinates))
    if marker.exists() and marker.read_text() == wanted:
        return sorted(dest.glob("*.jar"))
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(
            component, "Maven (mvn) is not on PATH", "install it: apt-get install maven"
        )
    progress(f"{component}: fetching {len(coordinates)} artifact(s) from Maven Central")
    deps = "\n".join(_DEP.format(g=g, a=a, v=v) for g, a, v in (c.split(":") for c in coordinates))
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    log = dest.parent / f"{dest.name}-maven.log"
    with tempfile.TemporaryDirectory() as tmp:
        pom = Path(tmp) / "pom.xml"
        pom.write_text(_POM.format(name=component, deps=deps))
        args = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={dest}",
            "-DincludeScope=runtime",
            f"-DexcludeTransitive={'false' if transitive else 'true'}",
        ]
        with open(log, "w") as out:
            rc = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        shutil.rmtree(dest, ignore_errors=True)
        raise StackError(
            component,
            f"Maven could not fetch {', '.join(coordinates)}",
            "check the network to Maven Central and the versions in twotier.yaml",
            log,
        )
    marker.write_text(wanted)
    return sorted(dest.glob("*.jar"))
