"""`pip install .` works: the wheel carries templates/ and static/, and its console script serves them from anywhere."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ("templates", "static")
# What a build must not see: VCS, caches, earlier build output, local data and the test suite.
NOT_BUILT = shutil.ignore_patterns(
    ".git", ".venv", ".*cache", "__pycache__", "build", "dist", "*.egg-info", "data", "tests", "bench"
)


def _asset_files() -> dict[str, Path]:
    """Each file under templates/ and static/, by its path in the wheel."""
    return {
        f"silicon_pool/{path.relative_to(ROOT).as_posix()}": path
        for folder in ASSETS
        for path in sorted((ROOT / folder).rglob("*"))
        if path.is_file()
    }


def _pip(*args: str) -> None:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, capture_output=True, env=env, timeout=180)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read()


def test_installed_wheel_serves_pages_and_assets_from_anywhere(tmp_path: Path, unused_tcp_port: int) -> None:
    # Build from a clean copy of the checkout: no build/ or stale build/lib in the repo, offline.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=NOT_BUILT)
    dist = tmp_path / "dist"
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(source))
    (wheel,) = dist.glob("silicon_pool-*.whl")
    assets = _asset_files()
    assert "silicon_pool/static/js/login.js" in assets and "silicon_pool/templates/login.html" in assets
    with zipfile.ZipFile(wheel) as archive:
        packed = set(archive.namelist())
        assert set(assets) <= packed, sorted(set(assets) - packed)
        for name, path in assets.items():
            assert archive.read(name) == path.read_bytes(), name

    site = tmp_path / "site"
    _pip("install", "--no-deps", "--no-index", "--target", str(site), str(wheel))
    script = site / "bin" / "silicon-pool"
    assert script.is_file()

    # The installed copy, not the repo's: PYTHONPATH is only the target, the cwd is elsewhere, and the
    # bytecode cache prefix records every source file the server imports.
    pycache = tmp_path / "pycache"
    env = {name: value for name, value in os.environ.items() if not name.startswith(("SILICON_POOL_", "PYTHON"))}
    env.update(PYTHONPATH=str(site), PYTHONPYCACHEPREFIX=str(pycache), PYTHONUNBUFFERED="1")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    base = f"http://127.0.0.1:{unused_tcp_port}"
    argv = [str(script), "--port", str(unused_tcp_port), "--data-dir", str(tmp_path / "data")]
    argv += ["--upstream", "http://127.0.0.1:9/v1"]
    with (tmp_path / "server.log").open("wb") as log:
        proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                status, page = _get(f"{base}/login")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "the installed server did not answer in 20 s"
                time.sleep(0.1)

        assert status == 200
        html = page.decode()
        assert '<form class="card login-card" id="login-form">' in html and 'name="password"' in html
        linked = dict(re.findall(r'(?:href|src)="((/static/[^"?]+)\?v=[^"]+)"', html))  # url -> path
        assert {"/static/app.css", "/static/app.js", "/static/js/login.js"} <= set(linked.values()), linked
        for url, path in linked.items():
            status, body = _get(f"{base}{url}")
            assert status == 200, url
            assert body == (ROOT / path.removeprefix("/")).read_bytes(), url

        installed = pycache / site.relative_to(site.anchor) / "silicon_pool"
        compiled = sorted(str(path.relative_to(pycache)) for path in pycache.rglob("*.pyc"))
        assert list((installed / "admin").glob("pages.*.pyc")) and list(installed.glob("cli.*.pyc")), compiled
        assert not (pycache / ROOT.relative_to(ROOT.anchor) / "silicon_pool").exists(), compiled  # not the repo's
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
            raise
    assert proc.returncode == 0, (tmp_path / "server.log").read_text()
