"""The generated Space folder runs as the Hub runs it: its requirements and the package's wheel installed
into a fresh virtualenv, then `python app.py`; the app answers /model_info.

Honest and fast: the heavy third-party packages already installed here are reused through a path entry
(the Hub installs the same pinned versions from the index), but the package itself comes only from the
wheel in the folder: the test checks `exbert_hub.__file__` lies inside the new venv, not this checkout.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serving import free_port

from exbert_hub.hub.deploy import SpaceConfig, space_folder



def test_generated_space_installs_and_answers_model_info(tmp_path, tiny):
    space = space_folder(tmp_path / "space", SpaceConfig(model="bert-base-uncased"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # third-party packages of this environment after the venv's own site-packages (so the wheel wins);
    # this environment's editable exbert_hub is not importable this way (its finder is a .pth hook)
    (Path(purelib) / "deps-from-the-test.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    pip = [str(py), "-m", "pip", "install", "--quiet", "--no-index"]
    # every pinned requirement must be what is installed (pip refuses otherwise, offline), and the wheel
    res = subprocess.run(pip + ["-r", "requirements.txt"], cwd=space, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    wheel = next(space.glob("exbert_hub-*.whl"))
    subprocess.run(pip + ["--no-deps", "--force-reinstall", str(wheel)], cwd=space, env=env, check=True)
    where = subprocess.run([py, "-c", "import exbert_hub; print(exbert_hub.__file__)"], cwd=space, env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert Path(where).resolve().is_relative_to(venv.resolve()), where
    port = free_port()
    env.update(EXBERT_HUB_MODEL=str(tiny("bert")), GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1")
    log = (tmp_path / "app.log").open("w")
    proc = subprocess.Popen([py, "app.py"], cwd=space, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        from gradio_client import Client

        deadline, client = time.time() + 180, None
        while client is None:
            assert proc.poll() is None, (tmp_path / "app.log").read_text()[-3000:]
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            except Exception:  # noqa: BLE001 - not up yet
                assert time.time() < deadline, (tmp_path / "app.log").read_text()[-3000:]
                time.sleep(1)
        info = client.predict(api_name="/model_info")
        assert (info["kind"], info["layers"], info["heads"]) == ("masked-lm", 2, 4)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
