"""examples/generate.py as a user runs it, and the progress display it uses."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import dakota_client as dc
from dakota_client import Client
from dakota_client.progress import Progress
from helpers import Server
from test_folder import cli_get, tree

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "generate.py"


def test_the_example_writes_the_article_folder_the_cli_writes(server: Server, tmp_path: Path) -> None:
    env = {**os.environ, "DAKOTA_SERVER": server.url}
    done = subprocess.run([sys.executable, str(EXAMPLE), "Pension risk transfer", "--word-count", "400",
                           "--out", str(tmp_path / "example")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "completed" in done.stderr and done.stdout.startswith("wrote ")
    (folder,) = (tmp_path / "example").iterdir()
    job_id = re.search(r"^job_id: (\S+)$", (folder / "article.md").read_text(), re.M)
    assert job_id
    cli_get(server.url, job_id.group(1), tmp_path / "cli")
    assert tree(tmp_path / "example") == tree(tmp_path / "cli")


def test_the_example_says_what_went_wrong(server: Server, tmp_path: Path) -> None:
    env = {**os.environ, "DAKOTA_SERVER": server.url}
    done = subprocess.run([sys.executable, str(EXAMPLE), "ab", "--word-count", "50", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "topic:" in done.stderr and "word_count:" in done.stderr and "Traceback" not in done.stderr


def test_progress_prints_one_line_per_step_without_a_bar(server: Server) -> None:
    out = io.StringIO()
    with Client(server.url, timeout=60) as client:
        article = client.run("Pension risk transfer", word_count=300, on_event=Progress(bar=False, file=out))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[  0%] job ") and lines[-1].startswith("[100%] completed")
    assert any("phase writing" in line for line in lines)
    assert article.title in lines[-1]


def test_progress_draws_a_tqdm_bar_when_tqdm_is_installed(server: Server) -> None:
    pytest.importorskip("tqdm")
    out = io.StringIO()
    with Client(server.url, timeout=60) as client, Progress(bar=True, file=out) as progress:
        client.run("Pension risk transfer", word_count=300, on_event=progress)
    assert "100%" in out.getvalue() and "completed" in out.getvalue()
    assert isinstance(progress, Progress) and dc.ServingStatus.SERVING.name == "SERVING"
