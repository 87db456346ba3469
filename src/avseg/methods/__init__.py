"""The method registry: name -> MethodSpec (a plain dict, iterated by the tests)."""

from __future__ import annotations

from avseg.methods import supervised, ws_avs
from avseg.methods.base import MethodSpec

METHODS: dict[str, MethodSpec] = {
    ws_avs.SPEC.name: ws_avs.SPEC,
    supervised.SPEC.name: supervised.SPEC,
}
