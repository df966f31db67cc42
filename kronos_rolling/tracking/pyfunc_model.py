"""The code MLflow runs to rebuild a registered version's pyfunc model.

Logged as "models from code" (`python_model` given as this file's path): loading a
version runs this file, which imports `KronosAdapterModel` from the installed package;
nothing is unpickled.
"""

from mlflow.models import set_model

from kronos_rolling.tracking.pyfunc import KronosAdapterModel

set_model(KronosAdapterModel())
