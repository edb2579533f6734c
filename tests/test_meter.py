"""Wall time, images/s and peak memory of a phase."""

import sys

import numpy as np
import pytest

from steeldefect import meter


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the peak is reset through /proc (Linux)")
def test_each_phase_reports_its_own_peak_memory():
    phases = {}
    with meter.phase(phases, "large", n_images=50):
        block = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
        del block
    with meter.phase(phases, "small"):
        np.ones(1000)
    large, small = phases["large"], phases["small"]
    assert large["images"] == 50 and large["images_per_s"] == pytest.approx(50 / large["seconds"])
    assert small["images"] is None and small["images_per_s"] is None
    assert large["peak_is_the_phases"] and small["peak_is_the_phases"]
    assert large["peak_rss_gib"] - small["peak_rss_gib"] > 0.15  # the 200 MiB belong to the first phase only
    assert meter.available_bytes() > 0 and meter.peak_rss_bytes() > 0


def test_a_phase_is_recorded_also_when_it_fails():
    phases = {}
    with pytest.raises(KeyError), meter.phase(phases, "broken", n_images=3):
        raise KeyError("x")
    assert set(phases["broken"]) == {"seconds", "images", "images_per_s", "peak_rss_gib", "peak_is_the_phases"}
