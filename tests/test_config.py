"""Settings: every ``MEDAI_*`` variable is a field, and settings travel to another process whole."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from medai.config import Settings

ROOT = Path(__file__).resolve().parents[1]
# Names that look like settings but are not read from the environment by medai.
NOT_SETTINGS = {
    "MEDAI_DEID_1",  # the de-identifier's ImplementationVersionName, a value in files
}


def _mentioned() -> set[str]:
    texts = [path.read_text(encoding="utf-8") for path in (ROOT / "medai").rglob("*.py")]
    texts.append((ROOT / "README.md").read_text(encoding="utf-8"))
    texts.append((ROOT / "serving" / "medai.env").read_text(encoding="utf-8"))
    names = {name for text in texts for name in re.findall(r"\bMEDAI_[A-Z0-9_]*[A-Z0-9]", text)}
    # The test suite's own variables (a PostgreSQL to test on) are not medai's settings.
    return {name for name in names if not name.startswith("MEDAI_TEST_")} - NOT_SETTINGS


def test_every_variable_the_code_or_docs_name_is_a_setting() -> None:
    fields = {f"MEDAI_{name.upper()}" for name in Settings.model_fields}
    mentioned = _mentioned()
    assert {"MEDAI_HOME", "MEDAI_SERVE_WORKERS", "MEDAI_BODY_IDLE_TIMEOUT"} <= mentioned
    assert mentioned - fields == set()


def test_no_module_reads_medai_variables_past_settings() -> None:
    reads = re.compile(r"""(environ(\.get)?\s*[\[(]|getenv\()\s*["']MEDAI_""")
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "medai").rglob("*.py")
        if reads.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_settings_reach_another_process_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(
        home=tmp_path / "home",
        serve_model="",
        serve_workers=3,
        body_idle_timeout=2.5,
        max_batch_size=4,
        inference_device="cpu",
        pull_token="s3cret",  # type: ignore[arg-type]  # pydantic turns it into a SecretStr
    )
    environment = settings.as_environment()
    assert environment["MEDAI_SERVE_WORKERS"] == "3"
    assert environment["MEDAI_PULL_TOKEN"] == "s3cret"
    assert "MEDAI_DATABASE_URL" not in environment  # unset: still derived from the home
    # A fresh interpreter with only these variables builds the same settings.
    code = (
        "from medai.config import Settings; s = Settings(); "
        "print(s.model_dump_json(exclude={'pull_token'}), s.pull_token.get_secret_value())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=environment | {"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    dumped, _, token = done.stdout.strip().rpartition(" ")
    assert dumped == settings.model_dump_json(exclude={"pull_token"}) and token == "s3cret"
    assert Settings.model_validate_json(dumped).resolved_database_url == (
        settings.resolved_database_url
    )
