"""What a request's quantile options resolve to (issue 20): any levels, at least 32 paths, the old form."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kronos_rolling.errors import ConfigError
from kronos_rolling.serve.forecasting import ForecastOptions
from kronos_rolling.serve.schemas import Options


def test_a_quantile_request_draws_at_least_32_paths_and_more_when_asked():
    assert Options(quantiles=[0.95, 0.05, 0.5]).to_options() == ForecastOptions(samples=32, quantiles=(0.05, 0.5, 0.95))
    assert Options(quantiles=[0.5], samples=8).to_options().samples == 32
    assert Options(quantiles=[0.5], samples=64).to_options().samples == 64
    assert Options().to_options() == ForecastOptions(samples=1, quantiles=())
    assert Options(samples=4).to_options().samples == 4  # no quantiles: what was asked


def test_the_old_form_is_p10_p50_p90():
    assert Options(quantiles=True).to_options().quantiles == (0.1, 0.5, 0.9)
    assert Options(quantiles=False).to_options().quantiles == ()
    assert ForecastOptions.asked(quantiles="0.05,0.95").quantiles == (0.05, 0.95)  # the command line's text


@pytest.mark.parametrize("levels", [[0.0, 0.5], [0.5, 1.0], [1.5], [float("nan")]])
def test_levels_outside_0_1_are_refused_naming_the_field(levels):
    with pytest.raises(ValidationError, match="quantiles"):
        Options(quantiles=levels)
    with pytest.raises(ConfigError, match="not strictly between 0 and 1"):
        ForecastOptions.asked(quantiles=levels)
