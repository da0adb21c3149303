r"""Safe files for trained networks and training checkpoints: tensors plus JSON metadata.

Both kinds of file are written with :func:`torch.save` and contain **only** tensors, numbers,
strings and containers of them (metadata is a JSON string); they are read with
``torch.load(weights_only=True)``, which refuses to build any other object.  A file that is
not such a file (garbage, a truncated write, or a hostile pickle that would run code when
unpickled) raises :class:`CheckpointError` with one line naming the file, and no code from it
runs.  Writes are atomic (temporary file, then :func:`os.replace`).

* a **network file** (:func:`save_network` / :func:`load_network`):
  ``{"format": "gufm-network", "version": 1, "meta": JSON, "state": state_dict}`` where
  ``meta`` holds the :func:`gufm.deep.nets.make_model` arguments, so the network is rebuilt
  and its weights loaded strictly;
* a **training checkpoint** (:func:`save_checkpoint` / :func:`load_checkpoint`): the state of
  :func:`gufm.deep.training.train` (``format: "gufm-checkpoint"``).

See docs/training.md, section 5.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gufm.deep.nets import make_model

NETWORK_FORMAT = "gufm-network"
CHECKPOINT_FORMAT = "gufm-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A network or checkpoint file that cannot be used (one line, names the file).

    Examples
    --------
    >>> issubclass(CheckpointError, ValueError)
    True
    """


def _atomic_save(path: Path, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _safe_load(path: str | os.PathLike, fmt: str, map_location: Any = "cpu") -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such {fmt} file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "pickle protocol" notes
            obj = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "not our file"
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise CheckpointError(
            f"{p}: not a {fmt} file (refused by the weights-only loader: "
            f"{type(exc).__name__}: {first})") from None
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        raise CheckpointError(f"{p}: not a {fmt} file (no '{fmt}' header)")
    if obj.get("version") != VERSION:
        raise CheckpointError(f"{p}: {fmt} version {obj.get('version')!r}, expected {VERSION}")
    return obj


def save_network(model: nn.Module, path: str | os.PathLike, **info: Any) -> Path:
    """Write a network built by :func:`gufm.deep.nets.make_model` (weights + its arguments).

    Parameters
    ----------
    model : GUFMNet
        Must have ``build_args`` (set by ``make_model``).
    path : path
    **info
        JSON-serialisable extras stored in the metadata (e.g. the training summary).

    Returns
    -------
    Path

    Examples
    --------
    >>> import tempfile, torch
    >>> from gufm.deep.nets import make_model
    >>> m = make_model("rn1", 2, 8, (1, 4, 4), 3, seed=0)
    >>> f = save_network(m, tempfile.mkdtemp() + "/net.pt", note="demo")
    >>> m2, meta = load_network(f)
    >>> torch.equal(m2.blocks[1].mlp.V.weight, m.blocks[1].mlp.V.weight), meta["info"]["note"]
    (True, 'demo')
    """
    args = getattr(model, "build_args", None)
    if args is None:
        raise ValueError("model must be built by gufm.deep.nets.make_model (no build_args)")
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    meta = {"build": args, "dtype": dtype, "info": info}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    p = Path(path)
    _atomic_save(p, {"format": NETWORK_FORMAT, "version": VERSION,
                     "meta": json.dumps(meta, default=str), "state": state})
    return p


def load_network(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Read a network file written by :func:`save_network`.

    Returns
    -------
    (GUFMNet, dict)
        The network (its saved dtype) and the metadata (``build``, ``dtype``, ``info``).

    Raises
    ------
    CheckpointError
        Not a network file, a hostile or corrupt file, or weights that do not fit.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> bad = pathlib.Path(tempfile.mkdtemp()) / "bad.pt"
    >>> _ = bad.write_bytes(b"garbage")
    >>> try:
    ...     load_network(bad)
    ... except CheckpointError as e:
    ...     print(str(e).split(":")[1].strip())
    not a gufm-network file (refused by the weights-only loader
    """
    obj = _safe_load(path, NETWORK_FORMAT)
    try:
        meta = json.loads(obj["meta"])
        build = dict(meta["build"])
        model = make_model(build.pop("arch"), build.pop("depth"), build.pop("width"), **build)
        model = model.to(getattr(torch, meta.get("dtype", "float32")))
        model.load_state_dict(obj["state"], strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise CheckpointError(f"{path}: unusable network file ({type(exc).__name__}: {first})"
                              ) from None
    return model, meta


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Atomically write a training state (tensors, numbers, strings; ``config`` and
    ``history`` as JSON).

    Examples
    --------
    >>> import tempfile, torch
    >>> f = tempfile.mkdtemp() + "/c.ckpt"
    >>> save_checkpoint(f, {"config": {"lam": 0.1}, "history": [], "x": torch.ones(2)})
    >>> load_checkpoint(f)["config"]
    {'lam': 0.1}
    """
    out = dict(state)
    out["config"] = json.dumps(state.get("config", {}), sort_keys=True, default=str)
    out["history"] = json.dumps(state.get("history", []), default=float)
    _atomic_save(Path(path), {"format": CHECKPOINT_FORMAT, "version": VERSION} | out)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (weights-only; see the module
    docstring).

    Raises
    ------
    CheckpointError
        Not a checkpoint, hostile or corrupt.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> bad = pathlib.Path(tempfile.mkdtemp()) / "x.ckpt"
    >>> _ = bad.write_bytes(b"not a checkpoint")
    >>> try:
    ...     load_checkpoint(bad)
    ... except CheckpointError as e:
    ...     print("x.ckpt: not a gufm-checkpoint file" in str(e))
    True
    """
    obj = _safe_load(path, CHECKPOINT_FORMAT, map_location)
    try:
        obj["config"] = json.loads(obj["config"])
        obj["history"] = json.loads(obj["history"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt gufm-checkpoint metadata ({exc})") from None
    return obj
