"""The container, without a Docker engine: the Dockerfile is lint-clean, and its own install and
entrypoint steps work when run the same way in a fresh virtual environment."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from servers import free_port

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_the_dockerfile_runs_as_non_root_with_a_healthcheck_and_clean_stop() -> None:
    assert re.search(r"^USER 10001:10001$", DOCKERFILE, re.M)
    assert "HEALTHCHECK" in DOCKERFILE and "STOPSIGNAL SIGTERM" in DOCKERFILE
    assert 'ENTRYPOINT ["carewatch"]' in DOCKERFILE and 'CMD ["run"]' in DOCKERFILE
    assert 'VOLUME ["/data"]' in DOCKERFILE
    assert DOCKERFILE.count("FROM ") == 2  # multi-stage


def _build_stage() -> str:
    """The text between the first FROM (the build stage) and the second."""
    return DOCKERFILE.split("\nFROM ")[1]


def test_the_image_install_and_entrypoint_work_in_a_fresh_venv(tmp_path: Path) -> None:
    # 1. The build stage's COPY lines, into a scratch source folder.
    src = tmp_path / "src"
    src.mkdir()
    for line in _build_stage().splitlines():
        if line.startswith("COPY "):
            *items, _dest = shlex.split(line[5:])
            for item in items:
                (shutil.copytree if (ROOT / item).is_dir() else shutil.copy)(ROOT / item, src / item)
    # 2. Its pip install line, into a fresh venv. Dependencies come from this machine's
    # site-packages (--no-deps) so the suite needs no network; the package itself, its console
    # script and its data files install exactly as in the image.
    pip_line = next(line for line in _build_stage().splitlines() if "pip install" in line)
    target = shlex.split(pip_line)[-1]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # Let the fresh venv see the packages of the environment running the tests (a .pth file),
    # whether that is a virtualenv or not.
    import site

    fresh_site = next((venv / "lib").glob("python3*/site-packages"))
    (fresh_site / "_suite.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    r = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-cache-dir",
            "--no-deps",
            "--no-build-isolation",
            target,
        ],
        cwd=src,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    shutil.rmtree(src)  # the image has no sources: the venv must stand on its own
    assert (venv / "share" / "carewatch" / "templates" / "alert.html").exists()

    # 3. The entrypoint, with the image's ENV, against a demo mailbox on the "volume".
    data = tmp_path / "data"
    demo = subprocess.run(
        [str(venv / "bin" / "carewatch"), "demo", "--dir", str(data / "demo")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert list((data / "demo" / "outbox").glob("*.html"))
    entry = json.loads(re.search(r"^ENTRYPOINT (.+)$", DOCKERFILE, re.M).group(1))  # type: ignore[union-attr]
    cmd = json.loads(re.search(r"^CMD (.+)$", DOCKERFILE, re.M).group(1))  # type: ignore[union-attr]
    env = {
        **os.environ,
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
        "CAREWATCH_CONFIG": str(data / "demo" / "carewatch.toml"),
        "CAREWATCH__STORE__URL": f'"sqlite:///{data / "carewatch.db"}"',
        "CAREWATCH__SERVICE__METRICS_PORT": str(port := free_port()),
    }
    # `docker run IMAGE validate --connect`: arguments take the place of CMD.
    check = subprocess.run([*entry, "validate", "--connect"], cwd=data, env=env, capture_output=True, text=True)
    assert check.returncode == 0 and "Connections" in check.stdout, check.stdout + check.stderr
    assert not (data / "carewatch.db").exists()  # --connect creates nothing
    proc = subprocess.Popen([*entry, *cmd], cwd=data, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        status = 0
        while time.monotonic() < deadline and status != 200:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    status = resp.status
            except (urllib.error.URLError, OSError):
                time.sleep(0.3)
        assert status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert oct((data / "carewatch.db").stat().st_mode & 0o777) == "0o600"
