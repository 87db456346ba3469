"""The method registry: name -> MethodSpec (a plain dict, iterated by the tests and, in this order, by the
bench's tables). Each method lives in the module named as its key (``ws-avs-av`` -> ``ws_avs_av.py``)."""

from __future__ import annotations

from avseg.methods import avs_ws, c2am, cam, ez_vsl, pcas, supervised, ws_avs, ws_avs_av
from avseg.methods.base import MethodSpec

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        avs_ws.SPEC, cam.SPEC, ez_vsl.SPEC, c2am.SPEC, ws_avs.SPEC,  # the WS-AVS paper's Table 1, weakest first
        ws_avs_av.SPEC, pcas.SPEC, supervised.SPEC,
    )
}  # fmt: skip
