"""The method registry: name -> MethodSpec (a plain dict, iterated by the tests)."""

from __future__ import annotations

from avseg.methods import supervised, ws_avs
from avseg.methods import avs_weak, c2am, cam, ez_vsl, ws_avs_audio  # reference methods, ws-avs-av
from avseg.methods import pcas  # weakly supervised semantic AVS
from avseg.methods.base import MethodSpec

METHODS: dict[str, MethodSpec] = {
    ws_avs.SPEC.name: ws_avs.SPEC,
    supervised.SPEC.name: supervised.SPEC,
    avs_weak.SPEC.name: avs_weak.SPEC,
    cam.SPEC.name: cam.SPEC,
    ez_vsl.SPEC.name: ez_vsl.SPEC,
    c2am.SPEC.name: c2am.SPEC,
    ws_avs_audio.SPEC.name: ws_avs_audio.SPEC,
    pcas.SPEC.name: pcas.SPEC,
}
