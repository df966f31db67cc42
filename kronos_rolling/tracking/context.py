"""The tracking context: one tracking URI and a client bound to it, passed explicitly.

A command resolves the URI once (its `--tracking-uri` flag, else MLFLOW_TRACKING_URI,
else the documented default, see settings.py), connects, and hands this object down.
Nothing else in the package builds an `MlflowClient` or relies on mlflow's global
tracking URI, so no process can fall back to MLflow's own default of a fresh
./mlflow.db (which looks like an empty registry).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from kronos_rolling.errors import RegistryError, RegistryUnavailable
from kronos_rolling.tracking.server import is_healthy, redact


NOTE_TAG = "mlflow.note.content"  # an experiment's or a run's description in the MLflow UI


@dataclass(frozen=True)
class Tracking:
    uri: str
    client: MlflowClient

    @classmethod
    def connect(cls, uri: str, *, check: bool = True) -> "Tracking":
        """A context for the server at `uri`; with `check`, one that answers."""
        if check and uri.startswith(("http://", "https://")) and not is_healthy(uri):
            raise RegistryUnavailable(
                f"the MLflow tracking server at {redact(uri)} does not answer; start it "
                "(kronos-rolling server) or point --tracking-uri / MLFLOW_TRACKING_URI at a running one"
            )
        return cls(uri, MlflowClient(tracking_uri=uri, registry_uri=uri))

    def describe(self) -> str:
        return redact(self.uri)

    def experiment_id(self, name: str, tags: dict[str, str] | None = None) -> str:
        """The id of the experiment `name`, created when it does not exist yet; `tags` (its kind and
        description) are set where missing, also on an experiment made elsewhere (`mlflow run
        --experiment-name`, an older version)."""
        tags = tags or {}
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return self.client.create_experiment(name, tags=tags)
            except MlflowException:  # created meanwhile by another job
                experiment = self.client.get_experiment_by_name(name)
        for key, value in tags.items():
            if key not in experiment.tags:
                self.client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id

    def model_version(self, uri: str) -> tuple[ModelVersion, str]:
        """The version a `models:/NAME/VERSION[/path]` or `models:/NAME@ALIAS[/path]` URI names, and the path."""
        body = uri[len("models:/"):].strip("/")
        try:
            if "@" in body.split("/", 1)[0]:
                head, _, path = body.partition("/")
                name, alias = head.split("@", 1)
                version = self.client.get_model_version_by_alias(name, alias)
            else:
                name, number, *rest = body.split("/", 2)
                path = rest[0] if rest else ""
                version = self.client.get_model_version(name, number)
        except MlflowException as exc:
            raise RegistryError(f"cannot resolve {uri} at {self.describe()}: {exc.message}") from exc
        except ValueError as exc:
            raise RegistryError(f"{uri} is not models:/NAME@ALIAS or models:/NAME/VERSION") from exc
        return version, path

    def download(self, artifact_uri: str, dst: Path) -> Path:
        """Download a run artifact or a `models:/` URI into `dst`; returns the local path.

        A `models:/` URI is resolved here, through this context's client: MLflow itself resolves
        one through its global registry URI whatever registry_uri it is given."""
        if artifact_uri.startswith("models:/m-"):  # a logged model, by id
            artifact_uri = self.client.get_logged_model(artifact_uri.removeprefix("models:/")).artifact_location
        elif artifact_uri.startswith("models:/"):
            version, path = self.model_version(artifact_uri)
            root = self.client.get_model_version_download_uri(version.name, version.version)
            artifact_uri = f"{root.rstrip('/')}/{path}" if path else root
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(dst),
                                                        tracking_uri=self.uri, registry_uri=self.uri))

    def list_artifacts(self, artifact_uri: str):
        return mlflow.artifacts.list_artifacts(artifact_uri=artifact_uri, tracking_uri=self.uri)
