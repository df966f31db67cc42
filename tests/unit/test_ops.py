"""Operations for real: `run-all` through a failing class, the monthly job against the
production stack (PostgreSQL, S3 through moto, basic auth), the torchrun path on CPU, and the
scheduling files every platform reads."""

from __future__ import annotations

import json
import os

import yaml
from support import REPO

from kronos_rolling.cli.main import main as kronos_rolling
from kronos_rolling.project import ENTRY_POINTS

SCHEDULE = "0 6 1 * *"  # 06:00 UTC on the 1st: the one schedule of every platform


def railway(name: str) -> dict:
    return json.loads((REPO / "deploy" / "railway" / f"{name}.json").read_text())


def crontab_entries() -> list[str]:
    lines = (REPO / "deploy" / "crontab").read_text().splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#") and "=" not in line.split()[0]]


def kubernetes(name: str) -> list[dict]:
    return list(yaml.safe_load_all((REPO / "deploy" / "kubernetes" / name).read_text()))


def test_every_platform_runs_the_monthly_script_at_0600_utc_on_the_first():
    cron = railway("finetune")
    assert cron["deploy"]["cronSchedule"] == SCHEDULE  # Railway's cron runs in UTC
    assert cron["deploy"]["restartPolicyType"] == "NEVER", "a cron service that exits must not be restarted"
    assert cron["deploy"]["startCommand"] == "bash deploy/monthly-job.sh"

    [line] = crontab_entries()
    assert " ".join(line.split()[:5]) == SCHEDULE and "CRON_TZ=UTC" in (REPO / "deploy" / "crontab").read_text()
    assert "bash deploy/monthly-job.sh" in line and "%" not in line  # cron turns % into newlines

    [cronjob] = kubernetes("cronjob.yaml")
    assert cronjob["kind"] == "CronJob" and cronjob["apiVersion"] == "batch/v1"
    spec = cronjob["spec"]
    assert spec["schedule"] == SCHEDULE and spec["timeZone"] == "Etc/UTC"
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["containers"][0]["command"][:2] == ["bash", "deploy/monthly-job.sh"]
    assert os.access(REPO / "deploy" / "monthly-job.sh", os.X_OK)


def test_railway_services_build_the_image_and_start_real_commands():
    for name in ("finetune", "predictor", "mlflow"):
        build = railway(name)["build"]
        assert build["builder"] == "DOCKERFILE" and (REPO / build["dockerfilePath"]).is_file()
    predictor = railway("predictor")["deploy"]
    assert "kronos_rolling.cli serve --host 0.0.0.0" in predictor["startCommand"]
    assert predictor["healthcheckPath"] == "/health"
    assert railway("mlflow")["deploy"]["startCommand"] == "bash mlflow_server/start.sh"
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    for copied in ("COPY MLproject conda.yaml ./", "COPY deploy ./deploy", "COPY kronos-service ./kronos-service"):
        assert copied in dockerfile
    ignore = (REPO / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore.index("deploy/*.env") > ignore.index("!deploy"), "secrets in deploy/*.env stay out of the image"


def test_the_kubernetes_backend_files_are_what_mlflow_reads(monkeypatch):
    from mlflow.projects import _parse_kubernetes_config

    monkeypatch.chdir(REPO)  # the documented command runs from the repository root
    config = _parse_kubernetes_config(json.loads((REPO / "deploy/kubernetes/kubernetes_config.json").read_text()))
    assert config["repository-uri"]
    job = config["kube-job-template"]
    assert job["kind"] == "Job" and job["metadata"]["namespace"] == "kronos-rolling"
    assert job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    container = pod["containers"][0]  # MLflow writes name, image, command and env into this one
    assert {"name", "image", "command"} <= set(container)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_operations_doc_uses_real_entry_points_parameters_commands_and_files():
    doc = (REPO / "docs" / "operations.md").read_text()
    checked = 0
    for line in doc.replace("\\\n", " ").splitlines():  # continuation lines joined
        words = line.split()
        if words[:2] != ["mlflow", "run"]:
            continue
        entry = words[words.index("-e") + 1] if "-e" in words else "main"
        names = {words[i + 1].split("=", 1)[0] for i, word in enumerate(words) if word == "-P"}
        known = {p.name for p in ENTRY_POINTS[entry].parameters}
        assert names <= known, (line, names - known)
        if entry != "simulate":
            assert "--experiment-name" in words, line
        checked += 1
    assert checked >= 4
    for sub in ("run", "run-all", "train", "due", "cadence", "history", "rollback", "server"):
        assert f"kronos-rolling {sub}" in doc and sub in kronos_rolling.commands, sub
    for path in ("deploy/monthly-job.sh", "deploy/crontab", "deploy/railway/finetune.json",
                 "deploy/railway/predictor.json", "deploy/kubernetes/cronjob.yaml",
                 "deploy/kubernetes/kubernetes_config.json", "deploy/kubernetes/job-template.yaml",
                 "deploy/kubernetes/MLproject", "kronos-service/finetune/train_event_conditioned.py"):
        assert path in doc and (REPO / path).exists(), path


def test_the_image_has_conda_for_a_plain_mlflow_run(monkeypatch):
    """deploy/Dockerfile installs Miniforge where MLflow looks for conda (MLFLOW_CONDA_HOME), off PATH,
    with the project's environment created into the /data volume. (The image itself cannot be built
    here: no network beyond package registries.)"""
    from mlflow.utils.conda import get_conda_bin_executable

    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert "Miniforge3-Linux-" in dockerfile and "bash /tmp/miniforge.sh -b -p /opt/conda" in dockerfile
    env_block = dockerfile.split("ENV MLFLOW_CONDA_HOME", 1)[1].split("\n\n")[0]
    for setting in ("=/opt/conda", "CONDA_ENVS_PATH=/data/conda/envs", "CONDA_PKGS_DIRS=/data/conda/pkgs"):
        assert setting in env_block, env_block
    assert "ENV PATH" not in dockerfile, "conda stays off PATH: the image's python is the installed one"
    monkeypatch.setenv("MLFLOW_CONDA_HOME", "/opt/conda")
    assert get_conda_bin_executable("conda") == "/opt/conda/bin/conda"
    assert "conda_env: conda.yaml" in (REPO / "MLproject").read_text()
