"""The model a run trains: layer options checked against the model before training starts."""

import pytest

from step_jepa.training.model import check_jepa_layer


def test_target_layer_is_checked_like_the_view_layer():
    check_jepa_layer(None, 2, "tiny", "--jepa_target_layer")  # unset: view 2 at --jepa_layer
    for ok in (0, 1, -1, -2):
        check_jepa_layer(ok, 2, "tiny", "--jepa_target_layer")
    for bad in (2, -3):
        with pytest.raises(ValueError, match=rf"--jepa_target_layer {bad}: tiny has 2 decoder layers"):
            check_jepa_layer(bad, 2, "tiny", "--jepa_target_layer")
