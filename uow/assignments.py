"""Assignments on tracked objects, noted as they are made.

A flush records what changed on each tracked object since its snapshot. To
find that without comparing every tracked object at every flush, every model's
``__setattr__`` (:func:`note_assignment`, installed on :class:`uow.model.Model`)
notes the object in the *sink* of the identity map that tracks it: a dict used
as an ordered set of object ids. A flush then compares only the objects noted
there, plus the few whose changes no assignment shows (see
:class:`uow.identity.IdentityMap`). An object is watched by one identity map:
a session refuses to add an object another session tracks.

msgspec's own ``__init__``, decoding, ``convert`` and ``structs.replace`` do not
call ``__setattr__``, so building and loading objects costs nothing here. The
session's own writes into objects (generated keys, foreign keys it fills in,
values it restores) go through :data:`set_attribute`, which notes nothing:
they are recorded or already match the snapshot.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

Sink = dict[int, None]
"""Ids of tracked objects assigned to since their session last compared them."""

WATCHED: dict[int, Sink] = {}
"""id(object) -> the sink of the one identity map watching it. An object's id
is only here while that map tracks it (and so keeps it alive), so an id can
never name another object."""

set_attribute: Callable[[Any, str, Any], None] = msgspec.Struct.__setattr__
"""Assign an attribute without noting it as an assignment."""


def note_assignment(
    obj: Any,
    name: str,
    value: Any,
    _set: Callable[[Any, str, Any], None] = set_attribute,
    _sink_of: Callable[[int], Sink | None] = WATCHED.get,
    _id: Callable[[Any], int] = id,
) -> None:
    """Assign ``obj.name = value`` and note ``obj`` in the sink watching it, if any."""
    _set(obj, name, value)
    obj_id = _id(obj)
    sink = _sink_of(obj_id)
    if sink is not None:
        sink[obj_id] = None


__all__ = ["WATCHED", "Sink", "note_assignment", "set_attribute"]
