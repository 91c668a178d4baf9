"""Browser fixtures: the app on the tiny BERT masked LM, launched in-process, driven by Debian Chromium.

Never runs `playwright install`: Playwright drives /usr/bin/chromium. Each test's page is saved as a
screenshot in test-artifacts/<test name>.png (gitignored).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from serving import launch_on_free_port

CHROMIUM = os.environ.get("EXBERT_HUB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="session")
def explorer_app(tiny):
    """The app on the tiny BERT masked LM (2 layers, 4 heads), on a free port, for the whole session."""
    from exbert_hub.app import AnalysisStore, build_app, launch_options

    model = str(tiny("bert"))
    demo = build_app(model, store=AnalysisStore(max_items=8))
    launch_on_free_port(demo, **launch_options())
    yield SimpleNamespace(url=demo.local_url.rstrip("/") + "/", model=model, demo=demo)
    demo.close()


@pytest.fixture(scope="session")
def browser():
    if not (shutil.which(CHROMIUM) or Path(CHROMIUM).exists()):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, request):
    """A fresh page that records dialogs (and dismisses them) and page errors; screenshot at teardown."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    dialogs: list[str] = []
    errors: list[str] = []

    def on_dialog(d):
        dialogs.append(d.message)
        d.dismiss()

    pg.on("dialog", on_dialog)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.dialogs, pg.errors = dialogs, errors
    yield pg
    ARTIFACTS.mkdir(exist_ok=True)
    name = request.node.name.replace("/", "_").replace("[", "-").replace("]", "")
    try:
        pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    finally:
        context.close()
