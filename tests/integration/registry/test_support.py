"""The registry tests' real parts (support/registry.py) do what they claim."""

from __future__ import annotations

from pathlib import Path

import mlflow
import requests
from support.registry import FaultProxy, register_stand_in


def test_fault_proxy_fails_exactly_the_chosen_requests(tracking_uri):
    with FaultProxy(tracking_uri) as proxy:
        rule = proxy.fail("GET", "/registered-models/search", failures=2)
        statuses = [requests.get(f"{proxy.url}/api/2.0/mlflow/registered-models/search",
                                 timeout=10).status_code for _ in range(3)]
        other = requests.get(f"{proxy.url}/api/2.0/mlflow/experiments/search",
                             params={"max_results": 1}, timeout=10).status_code
    assert statuses == [503, 503, 200]
    assert rule.hits == 3
    assert other == 200


def test_stand_in_version_has_real_artifacts(clean_registry):
    version = register_stand_in(clean_registry, "crypto", adapter_bytes=5000)
    uri = clean_registry.get_model_version_download_uri(version.name, version.version)
    listing = mlflow.artifacts.list_artifacts(artifact_uri=uri)
    sizes = {Path(f.path).name: f.file_size for f in listing if not f.is_dir}
    if not sizes:  # some stores list the model folder first
        sizes = {Path(f.path).name: f.file_size for d in listing if d.is_dir
                 for f in mlflow.artifacts.list_artifacts(artifact_uri=f"{uri}/{Path(d.path).name}")}
    assert sizes["adapter_model.safetensors"] >= 5000  # the weights plus the safetensors header
    assert version.name == "kronos-lora-crypto" and version.run_id
    assert set(version.tags) >= {"asset_class", "sha256.adapter_model.safetensors", "sha256.metadata.json"}
