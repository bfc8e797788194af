"""What a measurement ran on (step_jepa.models.environment): versions, the device by name, the date."""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta, timezone

import pytest
import torch

from step_jepa import __version__
from step_jepa.models import environment as env


def test_versions_name_the_packages_that_change_numerics():
    v = env.versions()
    assert set(v) == {"python", "torch", "transformers", "step_jepa"}
    assert v["torch"] == torch.__version__ and v["step_jepa"] == __version__


def test_cpu_device_name_says_cores_not_just_cpu():
    name = env.device_name("cpu")
    assert name.endswith(f", {os.cpu_count()} cores") and name != "cpu"
    assert env.device_name(torch.device("cpu")) == name


@pytest.mark.gpu
def test_cuda_device_name_is_the_cards():
    assert env.device_name("cuda:0") == torch.cuda.get_device_name(0)


def test_utc_timestamp_is_now_to_the_second():
    stamp = env.utc_timestamp()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp)
    when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert abs(datetime.now(timezone.utc) - when) < timedelta(seconds=5)
