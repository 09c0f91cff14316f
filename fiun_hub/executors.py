"""Run independent per-repo work: in-process, in a process pool, as Ray tasks, or batched on one device.

Every task is a picklable object with a ``repo`` field (the per-repo :class:`~fiun_hub.node_update.NodeTask` of a
forget) and every function is module-level; results come back keyed by repo. A failed task stops the whole run
and its exception is re-raised in the caller (who then publishes nothing).

Executors (``EXECUTORS``):

``local``
    ``workers == 1``: in this process, in order. ``workers > 1``: a ``forkserver`` process pool.
``ray``
    One Ray task per repo (``chunk_size`` groups several repos into one task). Without ``ray_address`` a local
    Ray is started once per process with ``ray.init(num_cpus=workers if workers > 1 else os.cpu_count())``;
    with it, ``ray.init(address=...)`` joins that cluster (``"auto"``, ``"ray://host:10001"``, ...), whose
    workers must have fiun-hub installed and see the hub's folder (the tasks read weights by path). Objects
    that several tasks share (the same object, or equal tensors / lists / dicts, e.g. the MFIM of every
    descendant with the same labels and origins) are put into the object store once and passed by
    reference; the function is shipped once; results come back as they finish. In a forget on a LocalHub each
    task writes its new weights file into the hub's blob store itself (``NodeTask.out_path``) and returns only
    its path and sha256, so no result carries a weights file; the per-repo path runs several repos per task
    (:func:`run_unlearn`). After a failure the remaining tasks are cancelled and waited for before the error is
    raised. Ray is an optional extra: ``pip install 'fiun-hub[ray]'``.

The dampening step of a forget can also run **batched** (:func:`run_batched`): the unlearnable tensors of many
repos with the same head shape are stacked and dampened with one set of tensor operations (one kernel launch
per operation on a GPU instead of one per repo), giving the same bytes as :func:`fiun_hub.node_update.unlearn_node`
repo by repo on CPU. :func:`run_unlearn` picks the per-repo or the batched path (batched when the device is
CUDA) for the executor asked for; :func:`run_call` runs one call (``fim``'s Fisher computation, say) locally
or as a Ray task.

What a GPU would change, and what is not measured here (no GPU on the development machine): the device choice
(:func:`resolve_device`: CUDA when torch sees it) and the switch to the batched path are tested on CPU by forcing
``batched=True, device="cpu"`` (same bytes as the per-repo path) and by faking ``torch.cuda.is_available``; the
stacked kernels themselves, the GPU reservation of Ray chunks and CUDA-vs-CPU numerics have never run on a GPU.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import multiprocessing as mp
import os
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterable, Sequence

from .errors import BadInput, FiunError, UnlearnError

EXECUTORS = ("local", "ray")
RAY_HINT = "the ray executor needs Ray: pip install 'fiun-hub[ray]' (or: pip install ray)"
DEFAULT_MAX_BATCH = 128  # repos stacked per batch in run_batched (bounds memory: one weights file each)
_CANCEL_WAIT_S = 60.0  # after a failure, how long Ray's cancelled tasks get to stop
RAY_TASKS_PER_SLOT = 4  # per-repo forget on Ray: about this many tasks per CPU of the cluster ...
RAY_MAX_CHUNK = 32  # ... each with at most this many repos


class ExecutorError(FiunError):
    """A per-repo task failed in a way that carries no fiun-hub error of its own (a worker died, ...)."""


def check_executor(executor: str, workers: int) -> None:
    """Refuse an executor this version does not have, or a worker count below 1 (one line each)."""
    if executor not in EXECUTORS:
        raise BadInput(f"unknown executor {executor!r}; this version has: {', '.join(EXECUTORS)}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise BadInput("--workers must be at least 1")


def name_error(exc: BaseException, repo: str) -> BaseException:
    """A fiun-hub error whose message does not name ``repo`` gets it as a prefix (same class, same exit code),
    so that the one line the CLI prints says which repo failed; other exceptions are returned unchanged."""
    if isinstance(exc, FiunError) and repo and repo not in str(exc):
        try:
            named = type(exc)(f"{repo}: {exc}")
        except Exception:  # noqa: BLE001  (an error class with another constructor)
            return exc
        named.__cause__ = exc.__cause__
        return named
    return exc


def call_named(fn: Callable[[Any], Any], task: Any) -> Any:
    """``fn(task)``; a failure is re-raised naming ``task.repo`` (:func:`name_error`), unless the task says its
    function names its own repos (``names_errors = True``: a chunk of several repos)."""
    if getattr(task, "names_errors", False):
        return fn(task)
    try:
        return fn(task)
    except FiunError as exc:
        named = name_error(exc, getattr(task, "repo", ""))
        if named is exc:
            raise
        raise named from None


def _kept(on_result: Callable[[str, Any], Any] | None, repo: str, result: Any) -> Any:
    return result if on_result is None else on_result(repo, result)


def run_tasks(fn: Callable[[Any], Any], tasks: Sequence[Any], *, workers: int = 1, executor: str = "local",
              progress: Callable[[str], None] | None = None, ray_address: str | None = None,
              chunk_size: int = 1, on_result: Callable[[str, Any], Any] | None = None) -> dict[str, Any]:
    """``{task.repo: fn(task)}`` for every task.

    ``executor="local"``: ``workers > 1`` uses a process pool (forkserver). ``executor="ray"``: Ray tasks
    (module docstring); ``chunk_size > 1`` runs that many repos per Ray task. ``progress(repo)`` is called as
    each repo finishes. The first failure cancels what has not started and is re-raised.

    ``on_result(repo, result)``, when given, is called in this process as each result arrives and what it
    returns is kept instead of the result: a caller can write each new weights file away (and keep its hash)
    as it comes, so that the results of a large forget are never all in memory together.
    """
    check_executor(executor, workers)
    tasks = list(tasks)
    if executor == "ray":
        return _run_ray(fn, tasks, workers=workers, progress=progress, address=ray_address, chunk_size=chunk_size,
                        on_result=on_result)
    out: dict[str, Any] = {}
    if workers == 1 or len(tasks) <= 1:
        for t in tasks:
            out[t.repo] = _kept(on_result, t.repo, call_named(fn, t))
            if progress:
                progress(t.repo)
        return out
    ctx = mp.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx) as pool:
        futures = {pool.submit(_call_packed, fn, pack(t)): t.repo for t in tasks}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for f in done:
                exc = f.exception()
                if exc is not None:
                    for p in pending:
                        p.cancel()
                    raise exc
                out[futures[f]] = _kept(on_result, futures[f], f.result())
                if progress:
                    progress(futures[f])
    return out


# ================================================================================================ Ray
def import_ray():
    """The ``ray`` module, or :class:`BadInput` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise BadInput(RAY_HINT) from None
    return ray


def init_ray(address: str | None = None, num_cpus: int | None = None):
    """Connect to Ray once per process: join ``address`` if given, else start a local Ray with ``num_cpus``
    (default: every core). A Ray this process already joined is reused as it is. Returns the ``ray`` module."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    import logging

    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "logging_level": logging.WARNING, "configure_logging": True}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=int(num_cpus or os.cpu_count() or 1), **kwargs)
    except Exception as exc:  # bad address, no cluster there, ...
        where = f"at {address}" if address else "locally"
        raise BadInput(f"could not start or join Ray {where}: {str(exc).splitlines()[0] if str(exc) else exc!r}") \
            from None
    return ray


def _fingerprint(value: Any) -> Any:
    """A hashable stand-in for ``value``'s content (tensors by dtype, shape and sha1 of their bytes), or None when
    the value is of a kind not worth sharing by content."""
    import torch

    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.device.type != "cpu":
            return None
        t = t.contiguous()
        raw = t.reshape(-1).view(torch.uint8) if t.numel() else t
        return ("T", str(t.dtype), tuple(t.shape), hashlib.sha1(raw.numpy().tobytes()).hexdigest())
    if isinstance(value, dict):
        parts = []
        for k, v in value.items():
            fv = _fingerprint(v)
            if fv is None or not isinstance(k, (str, int)):
                return None
            parts.append((k, fv))
        return ("D", tuple(parts))
    if isinstance(value, (list, tuple)):
        parts = [_fingerprint(v) for v in value]
        return None if any(p is None for p in parts) else ("L", type(value).__name__, tuple(parts))
    if isinstance(value, (str, int, float, bool)) or value is None:
        return ("S", type(value).__name__, value)
    return None


def share_fields(tasks: Sequence[Any], min_uses: int = 2) -> tuple[list[Any], dict[Any, Any], list[dict[str, Any]]]:
    """Split dataclass tasks into per-task stubs and shared values.

    A field value is *shared* when ``min_uses`` or more tasks hold it: the same object, or (tensors, lists,
    dicts of them) equal content. Returns ``(stubs, shared, slots)``: ``stubs[i]`` is task ``i`` with its
    shared fields set to None, ``shared`` maps a key to the value stored once, ``slots[i]`` maps task ``i``'s
    field name to its shared key. Scalars and strings are left inline (they cost less than a reference).
    Tasks that are not dataclasses are passed whole. Content is compared field by field until a field has
    shown ``probe`` all-different values in a row (a repo's own sidecar FIMs, say): from then on that field is
    compared by identity only, so hashing stays cheap.
    """
    probe = 8
    keys: list[dict[str, Any]] = []
    uses: dict[Any, int] = {}
    values: dict[Any, Any] = {}
    seen: dict[str, set] = {}
    by_content: dict[str, bool] = {}
    for t in tasks:
        mine: dict[str, Any] = {}
        if dataclasses.is_dataclass(t) and not isinstance(t, type):
            for f in dataclasses.fields(t):
                v = getattr(t, f.name)
                if v is None or isinstance(v, (str, int, float, bool)):
                    continue
                fp = None
                if by_content.get(f.name, True) and ("id", id(v)) not in uses:
                    fp = _fingerprint(v)
                    if fp is not None and f.name not in by_content:
                        fps = seen.setdefault(f.name, set())
                        fps.add(fp)
                        n_seen = sum(1 for k in keys if f.name in k) + 1
                        if n_seen >= probe:
                            by_content[f.name] = len(fps) < n_seen  # repeats seen: keep comparing content
                key = ("content", fp) if fp is not None else ("id", id(v))
                mine[f.name] = key
                uses[key] = uses.get(key, 0) + 1
                values.setdefault(key, v)
        keys.append(mine)
    shared = {k: values[k] for k, n in uses.items() if n >= min_uses}
    stubs, slots = [], []
    for t, mine in zip(tasks, keys):
        slot = {name: k for name, k in mine.items() if k in shared}
        stubs.append(dataclasses.replace(t, **{name: None for name in slot}) if slot else t)
        slots.append(slot)
    return stubs, shared, slots


class _Packed:
    """A CPU tensor in transit as a numpy array: pickling a torch tensor goes through ``torch.save`` (a few ms
    for a task's FIMs, each way); a numpy array pickles as a raw buffer. Bit-exact both ways."""

    __slots__ = ("array", "dtype")

    def __init__(self, array, dtype: str):
        self.array, self.dtype = array, dtype

    def __reduce__(self):
        return (_Packed, (self.array, self.dtype))


_VIEW_AS = {"torch.bfloat16": "int16", "torch.float8_e5m2": "uint8", "torch.float8_e4m3fn": "uint8"}


def pack(value: Any) -> Any:
    """``value`` with every CPU tensor inside (dataclass fields, dicts, lists, tuples) replaced by a
    :class:`_Packed` numpy array; :func:`unpack` restores it exactly."""
    import torch

    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.device.type != "cpu" or t.is_sparse or t.is_quantized:
            return value
        t = t.contiguous()
        name = str(t.dtype)
        if name in _VIEW_AS:
            t = t.view(getattr(torch, _VIEW_AS[name]))
        try:
            return _Packed(t.numpy(), name)
        except (TypeError, RuntimeError):  # a dtype numpy lacks
            return value
    return _map_inside(value, pack)


def _map_inside(value: Any, fn: Callable[[Any], Any]) -> Any:
    """``fn`` applied to every item of a dict, list, plain tuple or dataclass (one level); other values as is."""
    if isinstance(value, dict):
        return {k: fn(v) for k, v in value.items()}
    if isinstance(value, list):
        return [fn(v) for v in value]
    if isinstance(value, tuple) and type(value) is tuple:
        return tuple(fn(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changed = {f.name: fn(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **changed)
    return value


def unpack(value: Any) -> Any:
    """Inverse of :func:`pack`."""
    if isinstance(value, _Packed):
        import numpy as np
        import torch

        arr = value.array if value.array.flags.writeable else np.array(value.array, copy=True)
        t = torch.from_numpy(arr)
        if value.dtype in _VIEW_AS:
            t = t.view(getattr(torch, value.dtype.removeprefix("torch.")))
        return t
    return _map_inside(value, unpack)


def _call_packed(fn: Callable[[Any], Any], task: Any) -> Any:
    return call_named(fn, unpack(task))


def _rebuild(stub: Any, names: Sequence[str], values: Sequence[Any]) -> Any:
    stub = unpack(stub)
    return dataclasses.replace(stub, **{n: unpack(v) for n, v in zip(names, values)}) if names else stub


def _ray_apply(fn: Callable[[Any], Any], stub: Any, names: list[str], *values: Any) -> dict[str, Any]:
    """Body of one Ray task: ``values`` arrive resolved (Ray fetches the top-level references)."""
    t = _rebuild(stub, names, values)
    return {t.repo: call_named(fn, t)}


def _ray_apply_chunk(fn: Callable[[Any], Any], stubs: list[Any], names: list[list[str]], index: list[list[int]],
                     *values: Any) -> dict[str, Any]:
    out = {}
    for stub, ns, ix in zip(stubs, names, index):
        t = _rebuild(stub, ns, [values[i] for i in ix])
        out[t.repo] = call_named(fn, t)
    return out


_REMOTES: dict[str, Any] = {}


def _remote(name: str):
    ray = import_ray()
    if name not in _REMOTES:
        body = {"apply": _ray_apply, "chunk": _ray_apply_chunk}[name]
        _REMOTES[name] = ray.remote(max_retries=1)(body)
    return _REMOTES[name]


def _unwrap(exc: BaseException) -> BaseException:
    """The task's own exception out of Ray's wrapper, so the caller sees the same error as with ``local``."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return cause
    msg = str(exc).strip().splitlines()
    return ExecutorError(f"a Ray task failed: {msg[-1] if msg else type(exc).__name__}")


def _run_ray(fn, tasks, *, workers, progress, address, chunk_size=1, options: dict | None = None,
             on_result=None) -> dict[str, Any]:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise BadInput("chunk_size must be a positive integer")
    ray = init_ray(address, workers if workers > 1 else None)
    if not tasks:
        return {}
    stubs, shared, slots = share_fields(tasks)
    stubs = [pack(s) for s in stubs]
    refs = {k: ray.put(pack(v)) for k, v in shared.items()}  # every shared object stored once
    fn_ref = ray.put(fn)
    pending: dict[Any, list[str]] = {}
    if chunk_size == 1:
        remote = _remote("apply").options(**(options or {}))
        for stub, slot in zip(stubs, slots):
            names = list(slot)
            ref = remote.remote(fn_ref, stub, names, *[refs[slot[n]] for n in names])
            pending[ref] = [stub.repo]
    else:
        remote = _remote("chunk").options(**(options or {}))
        for i in range(0, len(stubs), chunk_size):
            part, pslots = stubs[i:i + chunk_size], slots[i:i + chunk_size]
            order: list[Any] = []
            names, index = [], []
            for slot in pslots:
                names.append(list(slot))
                ix = []
                for n in slot:
                    if slot[n] not in order:
                        order.append(slot[n])
                    ix.append(order.index(slot[n]))
                index.append(ix)
            ref = remote.remote(fn_ref, part, names, index, *[refs[k] for k in order])
            pending[ref] = [s.repo for s in part]
    out: dict[str, Any] = {}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                repos = pending.pop(ref)
                try:
                    got = ray.get(ref)
                except Exception as exc:  # noqa: BLE001  (RayTaskError, WorkerCrashedError, ...)
                    raise _unwrap(exc) from None
                for r, v in got.items():
                    out[r] = _kept(on_result, r, v)
                del got
                if progress:
                    for r in repos:
                        progress(r)
    finally:
        if pending:  # a failure (or an interrupt): stop the rest; their results are never used
            for ref in pending:
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001
                    pass
            # ... and let them settle before returning, so that no task still writes (a staged file, say) while
            # the caller cleans up after the failure.
            try:
                ray.wait(list(pending), num_returns=len(pending), timeout=_CANCEL_WAIT_S)
            except Exception:  # noqa: BLE001
                pass
    return out


def run_call(fn: Callable[..., Any], *args: Any, executor: str = "local", ray_address: str | None = None,
             num_gpus: float | None = None, num_cpus: float | None = None, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` here (``local``) or as one Ray task (``ray``; ``num_gpus`` reserves GPUs for it,
    default 1 when the cluster has a GPU, else 0; ``num_cpus`` reserves CPUs, default 1, at most what the
    largest live node has, so that the task can always be placed). Ray's wrapper is removed from a failure, as
    in :func:`run_tasks`; the task is not retried (a failure is reported, not hidden)."""
    check_executor(executor, 1)
    if executor == "local":
        return fn(*args, **kwargs)
    ray = init_ray(ray_address)
    if num_gpus is None:
        num_gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    options: dict[str, Any] = {"max_retries": 0, "num_gpus": num_gpus}
    if num_cpus is not None:
        options["num_cpus"] = max(0.0, min(float(num_cpus), _largest_node_cpus(ray)))
    remote = ray.remote(**options)(_call_body)
    try:
        return ray.get(remote.remote(fn, args, kwargs))
    except Exception as exc:  # noqa: BLE001
        raise _unwrap(exc) from None


def _largest_node_cpus(ray) -> float:
    try:
        return max((float(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")),
                   default=1.0)
    except Exception:  # noqa: BLE001
        return 1.0


def _call_body(fn, args, kwargs):
    return fn(*args, **kwargs)


# ================================================================================================ batched
def resolve_device(device: Any = None):
    """``torch.device``: the one given, else CUDA when available, else CPU."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclasses.dataclass
class _Loaded:
    task: Any
    data: bytearray
    header: dict
    params: dict  # name -> tensor (CPU clone of the stored values)
    key: Any = None  # group key, or None: do this one with unlearn_node


def _load(task: Any) -> _Loaded:
    from .safetensors_io import header_of_bytes, read_tensors
    from .node_update import read_into_bytearray

    data = read_into_bytearray(task.weights_path)
    header, _ = header_of_bytes(data, where=task.repo)
    params = read_tensors(data, header, task.mfim) if all(n in header for n in task.mfim) else {}
    ld = _Loaded(task, data, header, params)
    ld.key = _group_key(ld)
    return ld


def _load_named(task: Any) -> _Loaded:
    return call_named(_load, task)


def _group_key(ld: _Loaded) -> Any:
    """What must be equal for repos to be dampened together: names, shapes and dtypes of the unlearnable
    tensors, which are head rows, the forgotten-row mask, the mask of rows forgotten earlier, the classes taken out
    of the retain FIM, alpha and lambda. None when anything is off the common path (missing layer, shape mismatch, non-finite weights, ...):
    such a repo goes through :func:`~fiun_hub.node_update.unlearn_node`, which raises the same error as ever."""
    import torch

    t = ld.task
    if getattr(t, "sample_counts", None) is not None:  # sample-wise: the per-repo path (sample_forget_update)
        return None
    if getattr(t, "features", None) is not None:  # --scope features: the per-repo path (the fold)
        return None
    try:
        if not ld.params or set(ld.params) != set(t.mfim):
            return None
        for v in (t.alpha, t.lam):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                return None
        labels = [str(v) for v in t.labels]
        forget = [str(c) for c in t.forget]
        head = [n for n in t.head_params if n in ld.params]
        known = [c for c in forget if c in labels]
        if forget and not known:  # nothing of this repo changes (class_forget_update): the per-repo path
            return None
        inert = [c for c in dict.fromkeys(str(c) for c in getattr(t, "inert", ()) or ()) if c in labels
                 and c not in known]
        counts = t.counts
        drop = [c for c in dict.fromkeys(forget) if int(counts.get(c, 0)) > 0]
        total = sum(int(v) for v in counts.values())
        if drop and total - sum(int(counts[c]) for c in drop) <= 0:
            return None
        if set(t.model_fim) != set(t.mfim):
            return None
        sig = []
        for n, p in ld.params.items():
            if not p.dtype.is_floating_point or tuple(t.mfim[n].shape) != tuple(p.shape) \
                    or tuple(t.model_fim[n].shape) != tuple(p.shape):
                return None
            if not bool(torch.isfinite(p).all()):
                return None
            for c in drop:
                if c not in t.class_fims or n not in t.class_fims[c] \
                        or tuple(t.class_fims[c][n].shape) != tuple(p.shape):
                    return None
            is_head = n in head
            if is_head and known and (p.ndim == 0 or p.shape[0] != len(labels)):
                return None
            sig.append((n, tuple(p.shape), str(p.dtype), str(t.mfim[n].dtype), str(t.model_fim[n].dtype), is_head))
        if len(set(labels)) != len(labels):  # (never from a card) the per-repo path counts labels by name
            return None
        mask = tuple(lab in set(known) for lab in labels) if (known and head) else None
        inert_mask = tuple(lab in set(inert) for lab in labels) if (inert and head) else None
        if inert_mask is not None and len(known) + len(inert) < len(labels) \
                and any(p_.ndim == 0 or p_.shape[0] != len(labels) for n_, p_ in ld.params.items() if n_ in head):
            return None
        return (tuple(sig), mask, inert_mask, tuple(drop), float(t.alpha), float(t.lam))
    except Exception:  # noqa: BLE001  (anything odd: the per-repo path reports it)
        return None


def _stack(tensors: Iterable[Any], dev):
    import torch

    return torch.stack([x.detach() for x in tensors]).to(dev)


def dampen_group(group: Sequence[_Loaded], device: Any = None) -> list[dict[str, Any]]:
    """The class-wise FIUn update of every repo in ``group`` (all with the same :func:`_group_key`), on stacked
    tensors on ``device``: :func:`fiun_hub.dampening.forget_update_stacked`, the update that
    :func:`~fiun_hub.dampening.class_forget_update` runs on a stack of one, with its defaults (retain FIM, forget
    rows only, ranked-last reference, whole rows, rows forgotten earlier anchored), one set of operations per
    parameter name for the whole group. Returns each repo's new tensors, on CPU, in the group's order."""
    import torch

    from .dampening import PerName, forget_update_stacked

    dev = resolve_device(device)
    sig, mask, inert_mask, drop, alpha, lam = group[0].key
    tasks = [ld.task for ld in group]
    names = [n for n, *_ in sig]
    heads = [n for n, _s, _d, _m, _f, is_head in sig if is_head]
    rows = len(mask or inert_mask or ())

    def stacks(get: Callable[[int, str], Any]) -> PerName:
        """name -> the group's stack (B, ...) on ``dev``: the head's made once, the others' each time they are read
        (once: one parameter's inputs at a time on the device)."""
        fixed = {n: _stack((get(i, n) for i in range(len(group))), dev) for n in heads}
        return PerName(names, lambda n: fixed[n] if n in fixed else _stack((get(i, n) for i in range(len(group))), dev))

    def class_fim(c: str) -> Callable[[int, str], Any]:
        return lambda i, n: tasks[i].class_fims[c][n]

    totals = torch.tensor([float(sum(int(v) for v in t.counts.values())) for t in tasks], dtype=torch.float64,
                          device=dev)
    drops = [(torch.tensor([float(int(t.counts[c])) for t in tasks], dtype=torch.float64, device=dev),
              stacks(class_fim(c))) for c in drop]
    new = forget_update_stacked(
        stacks(lambda i, n: group[i].params[n]), stacks(lambda i, n: tasks[i].model_fim[n]),
        stacks(lambda i, n: tasks[i].mfim[n]), heads, mask or (False,) * rows, inert_mask or (False,) * rows,
        totals=totals, drops=drops, alpha=alpha, lam=lam)
    return [{n: new[n][i].cpu() for n in names} for i in range(len(group))]


def _finish(ld: _Loaded, new: dict[str, Any]) -> tuple[str, bytes | str, dict[str, Any]]:
    """Write the new tensors into the file's bytes (as unlearn_node does): (repo, bytes or the path they were
    written to, stats), as :func:`fiun_hub.unlearn.emit_weights` gives them."""
    from .node_update import emit_weights, splice_update

    return emit_weights(ld.task, ld.data, splice_update(ld.task.repo, ld.data, ld.header, ld.params, new))


def run_batched(tasks: Sequence[Any], *, device: Any = None, max_batch: int = DEFAULT_MAX_BATCH,
                progress: Callable[[str], None] | None = None,
                on_result: Callable[[str, Any], Any] | None = None) -> dict[str, Any]:
    """:func:`fiun_hub.node_update.unlearn_node` for every task, batched: ``max_batch`` repos at a time are read,
    grouped by head shape (and the rest of :func:`_group_key`), and each group is dampened on stacked tensors
    on ``device`` (default: CUDA if available, else CPU). On CPU the bytes are those of ``unlearn_node``; a
    repo off the common path (missing layer, non-finite weights, ...) goes through ``unlearn_node`` itself, so
    errors are the same too. Only ``max_batch`` weight files are in memory at once, plus the results (or what
    ``on_result`` keeps of them, as in :func:`run_tasks`)."""
    from .node_update import unlearn_node

    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise BadInput("max_batch must be a positive integer")
    dev = resolve_device(device)
    tasks = list(tasks)
    out: dict[str, tuple[str, bytes, dict[str, Any]]] = {}
    for i in range(0, len(tasks), max_batch):
        loaded = [_load_named(t) for t in tasks[i:i + max_batch]]
        groups: dict[Any, list[_Loaded]] = {}
        for ld in loaded:
            if ld.key is None:
                out[ld.task.repo] = _kept(on_result, ld.task.repo, call_named(unlearn_node, ld.task))
                if progress:
                    progress(ld.task.repo)
            else:
                groups.setdefault(ld.key, []).append(ld)
        for group in groups.values():
            try:
                news: list[Any] = dampen_group(group, dev)
            except UnlearnError:  # e.g. a reference row the weights' dtype cannot hold: each repo's own error
                news = [None] * len(group)
            for ld, new in zip(group, news):
                result = call_named(unlearn_node, ld.task) if new is None else _finish(ld, new)
                out[ld.task.repo] = _kept(on_result, ld.task.repo, result)
                ld.data = bytearray()  # free the input copy early
                if progress:
                    progress(ld.task.repo)
    return out


@dataclasses.dataclass
class _Chunk:
    """Several repos' tasks run as one :func:`run_batched` call (one Ray task)."""

    repo: str  # a label for progress: the first repo of the chunk
    tasks: list
    device: str | None = None
    max_batch: int = DEFAULT_MAX_BATCH
    names_errors = True  # run_batched names the failing repo itself (class attribute, not a field)


def _run_chunk(chunk: _Chunk) -> dict[str, Any]:
    return run_batched(chunk.tasks, device=chunk.device, max_batch=chunk.max_batch)


def run_unlearn(tasks: Sequence[Any], *, workers: int = 1, executor: str = "local", device: Any = None,
                batched: bool | None = None, progress: Callable[[str], None] | None = None,
                ray_address: str | None = None, max_batch: int = DEFAULT_MAX_BATCH,
                on_result: Callable[[str, Any], Any] | None = None) -> dict[str, Any]:
    """The per-repo dampening of a forget (``{repo: unlearn_node(task)}``), on the executor asked for.

    ``batched`` (default: True when ``device`` resolves to CUDA) uses :func:`run_batched`: with ``local`` in
    this process; with ``ray``, the repos are split into one chunk per worker (grouped by head shape first)
    and each chunk is one Ray task running :func:`run_batched` (reserving a GPU share when CUDA is used).
    Otherwise every repo is one :func:`fiun_hub.node_update.unlearn_node` call through :func:`run_tasks` (on Ray,
    several repos per task: about ``RAY_TASKS_PER_SLOT`` tasks per cluster CPU, at most ``RAY_MAX_CHUNK`` repos
    each, since scheduling a task costs more than dampening a small head).
    ``progress`` and ``on_result`` as in :func:`run_tasks`.
    """
    from .node_update import unlearn_node

    check_executor(executor, workers)
    dev = resolve_device(device)
    if batched is None:
        batched = dev.type == "cuda"
    tasks = list(tasks)
    if not batched:
        chunk = 1
        if executor == "ray" and tasks:
            # A Ray task costs a few ms to schedule and return, more than a small repo's dampening: give each
            # task several repos (about RAY_TASKS_PER_SLOT tasks per CPU, at most RAY_MAX_CHUNK repos each).
            ray = init_ray(ray_address, workers if workers > 1 else None)
            slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
            chunk = max(1, min(RAY_MAX_CHUNK, math.ceil(len(tasks) / (slots * RAY_TASKS_PER_SLOT))))
        return run_tasks(unlearn_node, tasks, workers=workers, executor=executor, progress=progress,
                         ray_address=ray_address, on_result=on_result, chunk_size=chunk)
    if executor == "local" and workers == 1:
        return run_batched(tasks, device=dev, max_batch=max_batch, progress=progress, on_result=on_result)
    # Several workers: sort by head shape so each chunk stacks well, then one chunk per worker (or per
    # max_batch repos, whichever gives more chunks).
    slots = workers
    ray = None
    if executor == "ray":
        ray = init_ray(ray_address, workers if workers > 1 else None)
        if workers == 1:
            slots = max(1, int(ray.cluster_resources().get("CPU", 1)))

    def shape_key(t):
        return tuple((n, tuple(v.shape)) for n, v in t.mfim.items())

    ordered = sorted(tasks, key=lambda t: (repr(shape_key(t)), t.repo))
    n_chunks = max(slots, math.ceil(len(ordered) / max_batch)) if ordered else 0
    size = max(1, math.ceil(len(ordered) / n_chunks)) if n_chunks else 1
    devname = None if device is None else str(device)
    chunks = [_Chunk(ordered[i].repo, ordered[i:i + size], devname, max_batch) for i in range(0, len(ordered), size)]
    repos_of = {c.repo: [t.repo for t in c.tasks] for c in chunks}

    def chunk_progress(label: str) -> None:
        if progress:
            for r in repos_of[label]:
                progress(r)

    def chunk_result(label: str, part: dict[str, Any]) -> dict[str, Any]:
        return {r: _kept(on_result, r, v) for r, v in part.items()}

    if ray is not None:
        gpus = ray.cluster_resources().get("GPU", 0) if dev.type == "cuda" else 0
        options = {"num_gpus": min(1.0, gpus / max(1, len(chunks)))} if gpus else None
        parts = _run_ray(_run_chunk, chunks, workers=workers, progress=chunk_progress, address=ray_address,
                         options=options, on_result=chunk_result)
    else:
        parts = run_tasks(_run_chunk, chunks, workers=workers, executor="local", progress=chunk_progress,
                          on_result=chunk_result)
    out: dict[str, Any] = {}
    for part in parts.values():
        out.update(part)
    return out


__all__ = ["EXECUTORS", "check_executor", "RAY_HINT", "ExecutorError", "run_tasks", "call_named", "name_error",
           "run_unlearn", "run_batched", "run_call", "dampen_group", "init_ray", "import_ray", "share_fields", "resolve_device"]
