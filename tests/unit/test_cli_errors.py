"""The ``twotier`` command as a person runs it: bad input gets one line and an exit code,
never a traceback, and nothing runs on a selection that matches nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from twotier.config import check_cron, load_settings


def _twotier(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TWOTIER_")}
    result = subprocess.run(
        [sys.executable, "-m", "twotier.cli", *args],
        env={**clean, "COLUMNS": "80", **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.returncode, result.stdout, result.stderr


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert "Traceback" not in stderr, stderr
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.mark.parametrize(
    ("args", "env", "code", "needle"),
    [
        (["logs", "postgres"], {}, 2, "no service 'postgres'; the services are kafka"),
        (["score", "--rows", "notjson"], {}, 2, "--rows is not valid JSON"),
        (["score", "--rows", '[["a"]]'], {}, 2, "'a' is not a number"),
        (["score", "7"], {}, 2, "give a USER and --items"),
        (["jobs", "--project", "nope"], {}, 2, "no project 'nope'; declared: memes, movielens"),
        (["recommend", "1", "-p", "nope"], {}, 2, "no project 'nope'"),
        (["stream-stop", "--project", "nope"], {}, 2, "no project 'nope'"),
        (["config"], {"TWOTIER_PROJECT": "nope"}, 2, "TWOTIER_PROJECT (project): 'nope' is not"),
        # Brackets survive: Rich markup is never read from an error text.
        (["config"], {"TWOTIER_PROJECT": "Bad-Name"}, 2, "pattern '^[a-z][a-z0-9_]{0,39}$'"),
        (["config"], {"TWOTIER_KAFKA__PORT": "abc"}, 2, "TWOTIER_KAFKA__PORT (kafka.port)"),
        (
            ["config"],
            {"TWOTIER_PIPELINES__RETRAIN_CRON": "not a cron"},
            2,
            "TWOTIER_PIPELINES__RETRAIN_CRON (pipelines.retrain_cron): 'not a cron' is not",
        ),
        (
            ["config"],
            {"TWOTIER_SERVING__DEFAULT_K": "5000"},
            2,
            "TWOTIER_SERVING__DEFAULT_K (serving): default_k (5000) is more than max_candidates",
        ),
        (["config"], {"TWOTIER_STACK__SERVICES": "kafka,nope"}, 2, "TWOTIER_STACK__SERVICES"),
        (
            ["experiments", "shuffle", "nope", "-p", "movielens"],
            {},
            2,
            "project 'movielens' has no experiment 'nope' (declared: ['ranker_ab'])",
        ),
        (
            ["experiments", "shuffle", "ranker_ab", "-p", "memes"],
            {},
            2,
            "'memes' runs no experiment",
        ),
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(
    args: list[str], env: dict[str, str], code: int, needle: str, tmp_path: Path
) -> None:
    rc, _, stderr = _twotier(*args, env={"TWOTIER_DATA_DIR": str(tmp_path), **env})
    assert rc == code, stderr
    assert needle in _one_error_line(stderr)


def test_an_unknown_project_or_empty_selection_materialises_nothing(tmp_path: Path) -> None:
    env = {"TWOTIER_DATA_DIR": str(tmp_path)}
    rc, out, stderr = _twotier("materialize", "--project", "nope", env=env)
    assert rc == 2 and "no project 'nope'; declared: memes, movielens" in _one_error_line(stderr)
    rc, out, stderr = _twotier("materialize", "--select", "key:nothing/*", env=env)
    assert rc == 2 and "matches no asset" in _one_error_line(stderr)
    # Daily readout assets and monthly training assets cannot share one run.
    mixed = "key:movielens/experiment_readout or key:movielens/training_set_tier1"
    rc, out, stderr = _twotier("materialize", "--select", mixed, env=env)
    line = _one_error_line(stderr)
    assert rc == 2 and "experiment_readout are partitioned by serve day" in line, stderr
    assert "materialise them in separate runs" in line
    # An unpartitioned asset takes no partition range.
    args = [
        "--select",
        "key:movielens/events_offline",
        "--partition-range",
        "2026-12-01...2026-12-01",
    ]
    rc, out, stderr = _twotier("materialize", *args, env=env)
    line = _one_error_line(stderr)
    assert rc == 2 and "movielens/events_offline is not partitioned: leave out" in line, stderr
    # Nothing started: no Dagster run, no instance folder written.
    assert "materialising" not in out + stderr
    assert not (tmp_path / "dagster").exists()


def test_config_prints_the_resolved_locations_and_loadable_yaml(tmp_path: Path) -> None:
    import yaml

    rc, out, stderr = _twotier("config", env={"TWOTIER_DATA_DIR": str(tmp_path)})
    assert rc == 0, stderr
    assert f"#   data folder    {tmp_path}" in out
    assert "#   online store   mongodb://127.0.0.1:27017/" in out
    assert yaml.safe_load(out)["data_dir"] == str(tmp_path)


def test_comma_separated_services_are_read_from_the_environment(tmp_path: Path) -> None:
    rc, out, stderr = _twotier(
        "config",
        env={"TWOTIER_DATA_DIR": str(tmp_path), "TWOTIER_STACK__SERVICES": "kafka,ferretdb"},
    )
    assert rc == 0, stderr
    assert "- kafka\n  - ferretdb" in out


def test_the_default_project_follows_the_declared_ones(tmp_path: Path) -> None:
    config = tmp_path / "twotier.yaml"
    config.write_text(
        "projects:\n  feed:\n    feature_groups:\n      - name: s\n        entity: user\n"
        "        features: [{name: views, kind: counter, action: view}]\n"
    )
    assert load_settings(config, data_dir=tmp_path).project == "feed"


@pytest.mark.parametrize(
    "expression", ["0 * * * *", "*/15 9-17 * * mon-fri", "0 0 1 jan,jul *", "5,35 * * * 0-7"]
)
def test_cron_expressions_that_dagster_reads_pass(expression: str) -> None:
    check_cron(expression)


@pytest.mark.parametrize(
    ("expression", "needle"),
    [
        ("not a cron", "needs 5 fields"),
        ("61 * * * *", "minute field '61'"),
        ("* 24 * * *", "hour field"),
        ("*/0 * * * *", "minute field"),
        ("* * * foo *", "month field"),
    ],
)
def test_bad_cron_expressions_name_the_field(expression: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        check_cron(expression)


def test_projects_and_features_show_the_declared_contract(tmp_path: Path) -> None:
    env = {"TWOTIER_DATA_DIR": str(tmp_path)}
    rc, out, stderr = _twotier("projects", "--json", env=env)
    assert rc == 0, stderr
    projects = {p["project"]: p for p in json.loads(out)}
    assert (
        projects["movielens"]["default"] and "item_attrs" in projects["movielens"]["feature_groups"]
    )
    rc, out, _ = _twotier("features", "--json", env=env)
    columns = json.loads(out)["item_attrs"]["columns"]
    assert columns[0] == "genre__Action" and columns[-1] == "year"
    rc, out, _ = _twotier("features", "item_attrs", env=env)
    assert rc == 0 and "genre__Action … (19)" in out
    assert max(len(line) for line in out.splitlines()) <= 80  # read at 80 columns
    rc, out, _ = _twotier("projects", env=env)
    assert rc == 0 and max(len(line) for line in out.splitlines()) <= 80
    rc, _, stderr = _twotier("features", "nope", env=env)
    assert rc == 2 and "no feature group 'nope'" in _one_error_line(stderr)


def test_models_and_online_name_the_service_that_is_down(tmp_path: Path) -> None:
    env = {
        "TWOTIER_DATA_DIR": str(tmp_path),
        "TWOTIER_MLFLOW__PORT": "9",
        "TWOTIER_SECANTUSDB__PORT": "9",
        "TWOTIER_FERRETDB__PORT": "9",
    }
    rc, _, stderr = _twotier("models", env=env)
    assert rc == 1 and "model registry at http://127.0.0.1:9 does not answer" in _one_error_line(
        stderr
    )
    rc, _, stderr = _twotier("online", "1", env=env)
    assert rc == 1 and "cannot read the online store at mongodb://127.0.0.1:9/" in _one_error_line(
        stderr
    )


def test_help_shows_no_flag_types_and_no_backticks(tmp_path: Path) -> None:
    rc, out, _ = _twotier("recommend", "--help", env={"TWOTIER_DATA_DIR": str(tmp_path)})
    assert rc == 0
    assert "<bool>" not in out and "`" not in out
    assert "--json" in out and "--group" in out


def test_score_for_a_user_names_the_serving_app_that_is_down(tmp_path: Path) -> None:
    env = {"TWOTIER_DATA_DIR": str(tmp_path), "TWOTIER_RAY__SERVE_PORT": "9"}
    rc, _, stderr = _twotier("score", "7", "--items", "1,2", env=env)
    line = _one_error_line(stderr)
    assert rc == 1, stderr
    assert "cannot reach the serving app at http://127.0.0.1:9/v1/movielens/second-tier-model" in (
        line
    )
    assert "Fix: `twotier up`" in line


def test_only_deploy_calls_its_private_post() -> None:
    """Callers go through the public ``*_over_http`` functions, never ``deploy._post``."""
    repo = Path(__file__).resolve().parents[2]
    offenders = [
        str(path.relative_to(repo))
        for folder in ("platform", "pipelines", "serve_apps", "feature_jobs", "infra")
        for path in (repo / folder).rglob("*.py")
        if path.name != "deploy.py" and "_post(" in path.read_text().replace("__post", "")
    ]
    assert offenders == []


def test_progress_lines_wrap_under_their_bullet_at_80_columns() -> None:
    from twotier.cli import bullet_text

    line = (
        "online job movielens: twotier.movielens.events → movielens__user_stats_v1, "
        "movielens__item_stats_v1, movielens__user_item_v1 (checkpoint "
        "/work/main/.twotier/checkpoints/movielens/online) [1 batch]"
    )
    lines = ("  • " + bullet_text(line, 80)).splitlines()
    assert len(lines) > 1 and all(len(x) <= 80 for x in lines)
    assert all(x.startswith("    ") and not x.startswith("     ") for x in lines[1:])
    # nothing is lost, and a path is never broken
    assert " ".join(x.strip() for x in lines).removeprefix("• ") == line
    assert any(x.strip().startswith("/work/main/.twotier/checkpoints/") for x in lines)
