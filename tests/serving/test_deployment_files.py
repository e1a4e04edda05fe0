"""The operator's files in serving/ agree with the code: setting names, unit syntax, image."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from medai.config import Settings

SERVING = Path(__file__).resolve().parents[2] / "serving"


def _env_lines() -> list[tuple[str, str, bool]]:
    """(name, value, commented out) of every ``MEDAI_*=`` line of medai.env."""
    found = []
    for line in (SERVING / "medai.env").read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"(#\s*)?(MEDAI_[A-Z0-9_]+)=(.*)", line.strip())
        if match:
            found.append((match[2], match[3], match[1] is not None))
    return found


def test_every_variable_in_the_env_file_is_a_setting() -> None:
    fields = {f"MEDAI_{name.upper()}" for name in Settings.model_fields}
    names = {name for name, _value, _commented in _env_lines()}
    # Settings ignores unknown MEDAI_* variables: a misspelt one would be silently unused.
    assert names - fields == set()
    assert "MEDAI_HOME" in names and "MEDAI_MLFLOW_TRACKING_URI" in names


def test_the_env_file_builds_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value, commented in _env_lines():
        if not commented:
            assert not value.startswith(('"', "'")), f"{name}: --env-file would keep the quotes"
            monkeypatch.setenv(name, value)
    settings = Settings()
    assert str(settings.resolved_home) == "/var/lib/medai"
    assert settings.serve_alias == "champion"
    # The defaults the commented lines claim are the real ones.
    defaults = Settings.model_fields
    for name, value, commented in _env_lines():
        field = name.removeprefix("MEDAI_").lower()
        if commented and field in defaults and defaults[field].default not in (None, ""):
            default = defaults[field].default
            assert type(default)(value) == default, f"{name}: the comment says {value}"


def test_the_unit_writes_where_medai_home_is() -> None:
    unit = (SERVING / "medai-serve.service").read_text(encoding="utf-8")
    home = {n: v for n, v, c in _env_lines() if not c}["MEDAI_HOME"]
    assert f"ReadWritePaths={home}" in unit
    assert "EnvironmentFile=/etc/medai/medai.env" in unit
    for directive in ("NoNewPrivileges=yes", "ProtectSystem=strict", "Restart=on-failure"):
        assert directive in unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    unit = (SERVING / "medai-serve.service").read_text(encoding="utf-8")
    # verify also checks that ExecStart's program exists: point it at this checkout's.
    medai = shutil.which("medai") or str(Path(__file__).resolve().parents[2] / ".venv/bin/medai")
    if not Path(medai).is_file():
        pytest.skip("no medai executable to stand in for /opt/medai/venv/bin/medai")
    copy = tmp_path / "medai-serve.service"
    copy.write_text(unit.replace("/opt/medai/venv/bin/medai", medai), encoding="utf-8")
    done = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "medai-serve.service" not in done.stderr  # no warning about the unit itself


def test_the_containerfile_pins_torch_runs_unprivileged_and_checks_health() -> None:
    text = (SERVING / "Containerfile").read_text(encoding="utf-8")
    pyproject = (SERVING.parent / "pyproject.toml").read_text(encoding="utf-8")
    for pin in re.findall(r'"(torch(?:vision)?==[0-9.]+)"', pyproject):
        assert pin in text  # the image installs the versions the project pins
    assert re.search(r"^FROM python:3\.11-slim", text, re.MULTILINE)
    assert re.search(r"^USER medai", text, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", text, re.MULTILINE)
    assert '"serve", "--host", "0.0.0.0"' in text
