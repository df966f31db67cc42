"""The MLflow UI as a person meets it, in headless Chromium (the Debian package, installed by
scripts/test-services.sh, driven by selenium) against a real tracking server after a demo-sized
run: the pooled adapter as of 2017-12-01, then crypto's monthly job as of 2018-01-01, on the
shipped base with small settings. Pages are waited for by their content, never by a sleep."""

from __future__ import annotations

import tempfile

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from support.training import job_context, small_config, small_eval

from kronos_rolling.pipeline.job import monthly_job
from kronos_rolling.settings import BUNDLED_BASE_DIR
from kronos_rolling.tracking.runs import experiment_name, ui_link
from kronos_rolling.tracking.server import ServerConfig, TrackingServer, free_port

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1600,1200")


@pytest.fixture(scope="module")
def demo_sized(tmp_path_factory):
    home = tmp_path_factory.mktemp("ui-home")
    with TrackingServer(ServerConfig.embedded(tmp_path_factory.mktemp("ui-server"), port=free_port())) as server:
        ctx = job_context(server.url, KRONOS_HOME=str(home), KRONOS_LOCK_DIR=str(home / "locks"))
        monthly_job(small_config(BUNDLED_BASE_DIR, mode="pooled", as_of="2017-12-01"), ctx,
                    eval_settings=small_eval(), progress=False)
        crypto = monthly_job(small_config(BUNDLED_BASE_DIR, as_of="2018-01-01"), ctx, eval_settings=small_eval(),
                             progress=False)
        yield server, ctx.client, crypto


@pytest.fixture(scope="module")
def browser():
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
        try:
            yield driver
        finally:
            driver.quit()


def page_text_with(driver, url: str, *expected: str, timeout: float = 90) -> str:
    """Open `url` and wait until the page shows every one of `expected`; the page's text."""
    driver.get(url)
    body = {}

    def shows_all(d) -> bool:
        body["text"] = d.find_element(By.TAG_NAME, "body").text
        return all(e in body["text"] for e in expected)

    try:
        WebDriverWait(driver, timeout, poll_frequency=0.5).until(shows_all)
    except Exception:  # noqa: BLE001 - say what the page showed instead
        missing = [e for e in expected if e not in body.get("text", "")]
        pytest.fail(f"{url} never showed {missing}; it showed:\n{body.get('text', '')[:3000]}")
    return body["text"]


def test_the_registered_model_page_shows_the_current_alias_and_the_decision(demo_sized, browser):
    server, client, crypto = demo_sized
    version = client.get_model_version("kronos-lora-crypto", crypto.version)
    alias = "production" if crypto.promoted else "staging"
    sentence = crypto.decision.reason[:60]  # the guard's sentence, in the audit table of the description
    text = page_text_with(browser, ui_link(server.url, "models/kronos-lora-crypto"), "Audit trail", sentence,
                          f"Version {version.version}")
    row = text.split(f"Version {version.version}")[1]  # the versions table: tags, then aliases, then description
    assert f"@ {alias}" in row and f"latest_decision\n: {version.tags['latest_decision']}" in row, row[:3000]
    assert text.index("Audit trail") < text.index("kronos.audit.000001"), "the readable table before the raw tags"


def test_the_experiment_opens_in_the_classic_view_with_its_description_and_runs(demo_sized, browser):
    server, client, crypto = demo_sized
    experiment = client.get_experiment_by_name(experiment_name("crypto"))
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    text = page_text_with(browser, ui_link(server.url, f"experiments/{experiment.experiment_id}"),
                          "Retrains of the crypto adapter", "crypto-2018-01-01", "Run Name")
    assert "Token Usage" not in text and "Sessions" not in text, "the GenAI overview opened instead"
    assert "/runs" in browser.current_url and "workflowType=machine_learning" in browser.current_url
