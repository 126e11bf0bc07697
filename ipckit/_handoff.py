"""Handing a channel end to a ``multiprocessing`` child: the one place that knows how.

An end reaches a child process in one of two ways, and each needs the same two promises: the
child can use the end, and the parent's later ``close()`` of its own copy says nothing to the peer
(saying goodbye is the new owner's job; P5 in docs/contract.md).

* **spawn / forkserver** pickle the Process's arguments.  A backend's ``__reduce__`` returns
  :func:`reduce_fds` (descriptors travel as ``multiprocessing.reduction.DupFd``; the rebuild
  function gets them back with :func:`take_fds`) or :func:`reduce_for_spawn` (anything else, e.g.
  a name to re-attach to).  Both refuse plain pickling with the backend's advice, and mark the end
  ``_handed_off`` once it is on its way.
* **fork** copies the arguments without pickling.  An ``os.register_at_fork`` handler finds the
  Process being started on the caller's stack and calls the Channel hooks: ``_fork_handed`` in the
  parent and ``_fork_adopt`` in the child for the (inheritable) ends among its arguments, and
  ``_disown_after_fork`` in the child for every other open end -- of any fork, a bare
  ``os.fork()`` too: such a copy raises UnsupportedOperation on use and closes silently (its use
  would write into the parent's stream), and its descriptors or liveness are dropped at once (kept
  alive there, they would hide the parent's death from the peer).  Only the Process being started
  counts: a fork-started child finds its own ``_launch`` frame on its stack when it forks a helper,
  and that is no hand-off.

A multiprocessing child closes its ends cleanly when it returns, as a process that exits normally
does (``channel``'s atexit hook), so its peer reads EndOfChannel, not PeerDied.  Under fork and
forkserver the child ends with ``os._exit`` and runs no atexit hook, so the close-all is also
registered as a ``multiprocessing.util.Finalize`` in every child, which multiprocessing's exit
handling runs before that ``os._exit`` (and in spawn children before the interpreter exits).

The CPython internals this relies on (``tests/core/test_handoff.py`` checks each on the running
interpreter; this module checks them at first use and raises :class:`UnsupportedOperation` naming
the one that changed, rather than silently not handing off):

``multiprocessing.popen_fork.Popen._launch``   calls ``os.fork()`` with the Process in its local
                                               ``process_obj`` (the fork handler reads that frame)
``multiprocessing.process.BaseProcess._args`` / ``_kwargs``   the Process's arguments
``multiprocessing.context.get_spawning_popen``  not None while spawn/forkserver pickle for a child
``multiprocessing.reduction.DupFd``             a descriptor the child receives; ``.detach()`` there
``multiprocessing.process.BaseProcess._bootstrap``  in a child, runs ``_after_fork`` (fork and
                                               forkserver: clears the finalizers, then runs
                                               ``util._run_after_forkers``) before the target and
                                               ``util._exit_function`` (the finalizers) after it
``multiprocessing.parent_process``              not None in a child once ``_bootstrap`` started
``multiprocessing.util.register_after_fork`` / ``Finalize``  how the close-all gets into that
``multiprocessing.process.current_process``     in a fork-started child, its own Process object
                                               (the ``process_obj`` of the ``_launch`` frame it
                                               inherited)

Import direction: ``options -> channel -> _handoff``.  This module imports nothing of ipckit's
but ``errors``; ``channel`` calls :func:`install` once with its set of live channels and the
``Channel`` class, so the fork handler needs no import of ``channel`` (no cycle), and backends
import this module for the reduce helpers.  ``multiprocessing`` is imported only when a hand-off
happens, so ``import ipckit`` stays cheap.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from .errors import UnsupportedOperation

if TYPE_CHECKING:
    from .channel import Channel

__all__ = ["install", "reduce_for_spawn", "reduce_fds", "take_fds", "refusal", "check_internals",
           "ReduceValue", "HandedFds"]

#: What ``__reduce__`` returns: a module-level rebuild function and its arguments.
ReduceValue: TypeAlias = tuple[Callable[..., Any], tuple[Any, ...]]
#: The descriptors :func:`reduce_fds` sends (``DupFd`` objects, None for -1); see :func:`take_fds`.
HandedFds: TypeAlias = tuple[Any, ...]

_LAUNCH = "multiprocessing.popen_fork.Popen._launch"
_ARGS = "multiprocessing.process.BaseProcess._args/_kwargs"
_SPAWNING = "multiprocessing.context.get_spawning_popen"
_DUPFD = "multiprocessing.reduction.DupFd"
_BOOTSTRAP = "multiprocessing.process.BaseProcess._bootstrap"
_FINALIZE = "multiprocessing.util.register_after_fork/Finalize"
#: Priority of the close-all among a child's multiprocessing finalizers: at least 0, so it runs in
#: the first round, before multiprocessing terminates the child's own daemonic children.
EXIT_PRIORITY = 0


def _changed(internal: str, detail: str) -> UnsupportedOperation:
    return UnsupportedOperation(
        f"ipckit cannot hand channel ends to multiprocessing children on Python {sys.version.split()[0]}: "
        f"the CPython internal {internal} it relies on changed ({detail}); pass the child a URL to "
        "connect to instead, and please report this"
    )


# ---------------------------------------------------------------- spawn / forkserver: pickling
_get_spawning_popen: Callable[[], Any] | None = None
_dup_fd: Callable[[int], Any] | None = None


def _spawn_internals() -> tuple[Callable[[], Any], Callable[[int], Any]]:
    """``get_spawning_popen`` and ``DupFd``, resolved (and checked) once, on first use."""
    global _get_spawning_popen, _dup_fd
    if _get_spawning_popen is None or _dup_fd is None:
        from multiprocessing import context, reduction

        get = getattr(context, "get_spawning_popen", None)
        if not callable(get):
            raise _changed(_SPAWNING, "multiprocessing.context has no get_spawning_popen()")
        dup = getattr(reduction, "DupFd", None)
        if not callable(dup):
            raise _changed(_DUPFD, "multiprocessing.reduction has no DupFd()")
        _get_spawning_popen, _dup_fd = get, dup
    return _get_spawning_popen, _dup_fd


def refusal(channel: Channel) -> str:
    """The advice given when *channel* is pickled outside a hand-off to a child process."""
    return (f"{type(channel).__name__} ({channel._url}) cannot be pickled: pass it as an argument of a "
            "multiprocessing.Process, or connect to its URL from the other process")


def reduce_for_spawn(channel: Channel, build: Callable[[], ReduceValue], *, refuse: str | None = None,
                     otherwise: Callable[[], ReduceValue] | None = None) -> ReduceValue:
    """The ``__reduce__`` value of *channel*: ``build()`` while multiprocessing pickles it for a child.

    Outside such a hand-off: ``otherwise()`` if given, else TypeError(*refuse*, default
    :func:`refusal`).  After ``build()`` returned, *channel* is marked handed off (``build`` may
    raise TypeError to refuse, leaving it untouched).
    """
    get_spawning_popen, _ = _spawn_internals()
    if get_spawning_popen() is None:
        if otherwise is not None:
            return otherwise()
        raise TypeError(refuse if refuse is not None else refusal(channel))
    value = build()
    channel._handed_off = True  # the child owns this end now; closing our copy must not say goodbye
    return value


def reduce_fds(channel: Channel, rebuild: Callable[..., Channel], fds: Sequence[int], state: tuple[Any, ...],
               *, refuse: str | None = None, otherwise: Callable[[], ReduceValue] | None = None) -> ReduceValue:
    """``__reduce__`` for an end made of descriptors: ``rebuild(handed, *state)`` runs in the child.

    *fds* are duplicated into the child (-1 entries stay -1); *rebuild* calls
    ``take_fds(handed)`` to get them, in the same order.  Refusal and marking as
    :func:`reduce_for_spawn`.
    """
    def build() -> ReduceValue:
        _, dup = _spawn_internals()
        handed: HandedFds = tuple(None if fd < 0 else dup(fd) for fd in fds)
        return rebuild, (handed, *state)

    return reduce_for_spawn(channel, build, refuse=refuse, otherwise=otherwise)


def take_fds(handed: HandedFds) -> tuple[int, ...]:
    """In a rebuild function: the descriptors :func:`reduce_fds` sent, now this process's to close."""
    try:
        return tuple(-1 if dup is None else int(dup.detach()) for dup in handed)
    except AttributeError as exc:
        raise _changed(_DUPFD, f"the object DupFd() returned has no detach(): {exc}") from exc


# ---------------------------------------------------------------- fork: the at-fork handler
_live: weakref.WeakSet[Channel] = weakref.WeakSet()
_channel_type: type | None = None  # Channel (abstract: mypy takes no type[Channel] for it)
_fork_handed: list[Channel] = []
_fork_open: list[Channel] = []
_fork_mp = False
_fork_checked: types.ModuleType | None = None  # the popen_fork module that passed the check


def _nothing_to_close() -> None:
    """The close-all until install() gives the real one."""


_close_all: Callable[[], None] = _nothing_to_close
_exit_hook_armed = False  # the after-fork hook that registers the close-all in children is in place


def install(live: weakref.WeakSet[Channel], channel_type: type, close_all: Callable[[], None]) -> None:
    """Register the fork handler over *live* (the open channels) and *close_all* (what a process's
    exit runs) for multiprocessing children; called once, by ``channel``."""
    global _live, _channel_type, _close_all
    if _channel_type is not None:
        raise RuntimeError("ipckit._handoff.install() runs once")
    _live, _channel_type, _close_all = live, channel_type, close_all
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
    # Imported in a multiprocessing child (spawn and forkserver unpickle the Process's arguments,
    # or the target imports ipckit), or in a fork server: arm the children's exit now.
    _arm_child_exit()


# ---------------------------------------------------------------- the exit of multiprocessing children
class _Hook:
    """What ``register_after_fork`` keys its entry on (it keeps a weak reference; this is immortal)."""


_HOOK = _Hook()


def _exit_internals(util: types.ModuleType) -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    register, finalize = getattr(util, "register_after_fork", None), getattr(util, "Finalize", None)
    if callable(register) and callable(finalize):
        return register, finalize
    return None


def _arm_child_exit() -> None:
    """Make every multiprocessing child of this process (and this one, if it is such a child) run
    the close-all when it ends.  Idempotent; a no-op until multiprocessing is imported.

    The close-all becomes a finalizer of this process, and an after-fork hook registers it anew in
    each child: the ``_bootstrap`` of a fork or forkserver child clears the finalizers it
    inherited (or registered while unpickling its arguments), then runs the after-fork hooks; a
    spawn child's keeps both (its ``_after_fork`` does nothing).  The finalizer acts only in a
    child (:func:`_close_all_in_child`): the main process's exit belongs to ``channel``'s atexit
    hook, in the order the program registered its own.
    """
    global _exit_hook_armed
    util = sys.modules.get("multiprocessing.util")
    if _exit_hook_armed or util is None or "multiprocessing.process" not in sys.modules:
        return
    internals = _exit_internals(util)
    if internals is None:  # check_internals() names it; children then end without a goodbye
        return
    register, _ = internals
    _exit_hook_armed = True
    _register_close_all(None)
    register(_HOOK, _register_close_all)


def _register_close_all(_hook: object) -> None:
    util = sys.modules.get("multiprocessing.util")
    internals = None if util is None else _exit_internals(util)
    if internals is not None:
        internals[1](None, _close_all_in_child, exitpriority=EXIT_PRIORITY)


def _close_all_in_child() -> None:
    """The close-all, in a multiprocessing child (whose parent_process() is set by its _bootstrap)."""
    process = sys.modules.get("multiprocessing.process")
    if process is not None and process.parent_process() is not None:
        _close_all()


def check_internals() -> None:
    """Raise UnsupportedOperation naming the first CPython internal the hand-off needs that changed."""
    _check_fork_internals(importlib.import_module("multiprocessing.popen_fork"))
    process = importlib.import_module("multiprocessing.process")
    names = process.BaseProcess.__init__.__code__.co_names
    if "_args" not in names or "_kwargs" not in names:
        raise _changed(_ARGS, "BaseProcess.__init__ no longer stores _args and _kwargs")
    _spawn_internals()
    util = importlib.import_module("multiprocessing.util")
    if _exit_internals(util) is None:
        raise _changed(_FINALIZE, "multiprocessing.util has no register_after_fork() or Finalize")
    bootstrap = getattr(getattr(process.BaseProcess, "_bootstrap", None), "__code__", None)
    after_fork = getattr(getattr(process.BaseProcess, "_after_fork", None), "__code__", None)
    if bootstrap is None or "_exit_function" not in bootstrap.co_names or "_after_fork" not in bootstrap.co_names:
        raise _changed(_BOOTSTRAP, "it no longer runs _after_fork() and util._exit_function()")
    if after_fork is None or "_run_after_forkers" not in after_fork.co_names:
        raise _changed(_BOOTSTRAP, "BaseProcess._after_fork() no longer runs util._run_after_forkers()")


def _check_fork_internals(popen_fork: types.ModuleType) -> None:
    global _fork_checked
    if _fork_checked is popen_fork:
        return
    launch = getattr(getattr(popen_fork, "Popen", None), "_launch", None)
    code = getattr(launch, "__code__", None)
    if code is None:
        raise _changed(_LAUNCH, "it is gone or not a Python function")
    if "process_obj" not in code.co_varnames:
        raise _changed(_LAUNCH, f"it has no local named process_obj (its locals: {code.co_varnames})")
    if "fork" not in code.co_names:
        raise _changed(_LAUNCH, "it no longer calls os.fork() itself")
    _fork_checked = popen_fork


def _channels_in(obj: Any, depth: int = 0) -> Iterator[Channel]:
    assert _channel_type is not None
    if isinstance(obj, _channel_type):
        yield cast("Channel", obj)
    elif depth < 3 and isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _channels_in(item, depth + 1)
    elif depth < 3 and isinstance(obj, dict):
        for item in obj.values():
            yield from _channels_in(item, depth + 1)


def _process_being_started(frame: types.FrameType | None) -> Any:
    """The multiprocessing Process whose fork is under way, found from *frame* outwards, or None.

    The nearest ``_launch`` frame decides.  In a fork-started child that forks again (a helper of
    its own, with a bare ``os.fork()``), the nearest one is the frame that started this very child,
    inherited from the parent: its Process is the current process, and this fork hands nothing.
    """
    for _ in range(30):
        if frame is None:
            return None
        if frame.f_code.co_name == "_launch":
            proc = frame.f_locals.get("process_obj")
            if proc is not None:
                process = sys.modules.get("multiprocessing.process")
                if process is not None and proc is process.current_process():
                    return None
                return proc
        frame = frame.f_back
    return None


def _before_fork() -> None:
    global _fork_mp
    _fork_open[:] = [ch for ch in list(_live) if not ch._closed]
    # No popen_fork module, no multiprocessing fork: every Popen that forks lives there.
    popen_fork = sys.modules.get("multiprocessing.popen_fork")
    if popen_fork is None:
        return
    _arm_child_exit()  # the child may open channels of its own: its exit closes them too
    if not _fork_open:
        return
    # Raised here, the error is printed as "Exception ignored in _before_fork" (at-fork handlers
    # cannot stop a fork): loud, where the alternative is a peer told "closed" by mistake.
    _check_fork_internals(popen_fork)
    proc = _process_being_started(sys._getframe(1))
    if proc is None:
        return
    try:
        args, kwargs = proc._args, proc._kwargs
    except AttributeError as exc:
        raise _changed(_ARGS, f"the Process being started has no {exc.name}") from exc
    _fork_mp = True
    for ch in _channels_in((args, kwargs)):
        # A channel that cannot leave its process (memory://) is not handed: the child's copy
        # would be a second channel that only looks like the first.
        if not ch._closed and ch.capabilities.inheritable:
            ch._fork_handed()
            _fork_handed.append(ch)


def _after_fork_in_parent() -> None:
    global _fork_mp
    _fork_handed.clear()
    _fork_open.clear()
    _fork_mp = False


def _after_fork_in_child() -> None:
    global _fork_mp
    # The live set belongs to the parent; a forked child closes at exit only what it adopted.
    _live.clear()
    handed = {id(ch) for ch in _fork_handed}
    for ch in _fork_handed:
        ch._fork_adopt()
        _live.add(ch)
    for ch in _fork_open:
        if id(ch) not in handed and not ch._closed:
            ch._disown_after_fork(_fork_mp)
    _fork_handed.clear()
    _fork_open.clear()
    _fork_mp = False
