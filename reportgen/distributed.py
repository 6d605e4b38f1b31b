"""One run across many processes, GPUs and machines, launched by torchrun (``WORLD_SIZE`` > 1 in the environment).

Every rank loads the config, prepares the model (on ``cuda:LOCAL_RANK``, or the CPU) and makes the same plan. The
image batch groups of that plan (fixed groups of ``batch_size`` images in folder order, so an image always has the
same batch-mates) are dealt to the ranks **round-robin by group number**: group ``g`` is rank ``g % WORLD_SIZE``'s.
The split depends only on the folder listing and the batch size, never on what the cache held when a rank planned
(ranks plan at slightly different times while others already write), so it is the same on every rank and on every
rerun; the ranks' shares differ by at most one group, so the work is balanced as long as groups cost about the same
(and a slow stretch of the folder is spread over every rank, not given to one). Each rank computes the groups of its
share that miss something into the shared cache and draws its images' figures into the **figure cache** (in a
scratch folder of its own under ``CACHE_DIR/figures``, never in the output folder); the last rank (one with the
fewest groups) also computes the kernel galleries and filter visualizations into the cache. The ranks then meet, and
rank 0
runs the ordinary one-process run, which finds every result cached and links every figure, and publishes the
report, the PDF and the manifest: the same bytes as a one-process run. The manifest's ``stats`` sum the work of
every rank (``processes`` counts them; ``seconds`` are the slowest rank's). Ranks other than 0 exit as soon as
their share is done: they have nothing left to do, torchrun waits for rank 0 before it returns, and a barrier
after publishing would bound the publishing by the process group's time-out.

The ranks meet through a gloo process group even on GPUs: they exchange only a few small Python objects (the
outcome of each step, the stats), never tensors, and gloo detects a peer that died at once (its connection closes)
and honours its time-out, so nobody waits forever. A step that fails on any rank fails on all of them with one
message, printed by rank 0 (the others exit with the same code, quietly); a rank that dies is named with its image
groups, found through torchrun's key-value store. Rerunning resumes from the cache; so does a worker restarted by
torchrun's ``--max-restarts``.

Environment: ``REPORTGEN_DIST_TIMEOUT`` (seconds, default 3600): how long a rank waits for the others at a meeting
point before the run fails; ``REPORTGEN_THREADS``: CPU threads per process (default: the cores / the processes on
this machine).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

from reportgen.atomic import temp_name
from reportgen.config import RunConfig
from reportgen.errors import ConfigError, ReportgenError, UsageError
from reportgen.results import RunResult, RunStats

__all__ = ["requested", "rank", "agreed", "run", "share_of", "Prior", "RankError", "Quiet", "DEFAULT_TIMEOUT_S"]

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_TIMEOUT_S = 3600


def requested() -> bool:
    """Whether this process is one of several of one run (torchrun, or ``srun`` with the same variables)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def rank() -> int:
    """This process's rank (0 when not under torchrun)."""
    return int(os.environ.get("RANK", "0")) if requested() else 0


def share_of(group: int, world: int) -> int:
    """The rank that computes batch group ``group`` (numbered in folder order from 0) of a run of ``world`` ranks."""
    return group % world


class Quiet(ReportgenError):
    """A failure that rank 0 reports for every rank: the others exit with its code and print nothing."""

    quiet = True

    def __init__(self, exit_code: int):
        super().__init__("reported by rank 0")
        self.exit_code = exit_code


class RankError(ReportgenError):
    """A step failed on (or a process of) some ranks; the message names them. Raised on rank 0."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class _Stopped(BaseException):
    """SIGTERM arrived (torchrun stops every process of a run when one of them failed)."""


@dataclass(frozen=True)
class Prior:
    """What the ranks did before rank 0 publishes: the run's clock and the work of every rank (``runner.run``)."""

    stats: RunStats
    t_start: float
    started: datetime


@dataclass(frozen=True)
class _Failure:
    rank: int
    host: str
    exit_code: int
    lines: tuple[str, ...]
    kind: str

    @property
    def text(self) -> str:
        return "; ".join(self.lines)


# ---------------------------------------------------------------------------------------------- the group


class _Group:
    """This process's place in the run: the gloo process group and torchrun's key-value store."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist
        if "TORCHELASTIC_RUN_ID" in os.environ:  # started by torchrun: die with its agent, even when it is SIGKILLed
            from reportgen.atomic import die_with_parent  # (else a rank waits out the meeting time-out, an hour)

            die_with_parent(os.getppid())
        self.owned = not dist.is_initialized()
        attempt = f"reportgen/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
        self.store = None
        if self.owned:
            base = _base_store()
            # the process group's keys in a namespace of this attempt: torchrun keeps its store across
            # --max-restarts, and gloo's plain env:// start would read the dead attempt's addresses and fail
            dist.init_process_group("gloo", store=dist.PrefixStore(attempt + "pg/", base),
                                    rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                                    timeout=timedelta(seconds=_timeout()))
        else:  # the caller started the process group itself
            base = dist.distributed_c10d._get_default_store()
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        self.host = socket.gethostname()
        try:  # torchrun's store (hosted by its agent, so it outlives a dead worker)
            self.store = dist.PrefixStore(attempt + "run/", base)
            self.store.set(f"who/{self.rank}", json.dumps({"host": self.host, "pid": os.getpid()}))
        except Exception as exc:  # without the store only the naming of a dead rank and the shared bar are lost
            log.debug("no key-value store for the run's ranks: %s", exc)
            self.store = None
        self.share: dict[int, str] = {}  # per rank, its image groups in words (once the plan is made)

    def mark(self, key: str) -> None:
        if self.store is not None:
            try:
                self.store.set(f"{key}/{self.rank}", "1")
            except Exception:  # noqa: S110 - a lost store only costs the naming of a dead rank
                pass

    def gather(self, value: Any, step: str) -> list[Any]:
        """Every rank's ``value``; a rank that is gone (or the time-out) becomes a ``RankError`` naming it."""
        global _raise_on_sigterm
        self.mark(f"arrived/{step}")
        out: list[Any] = [None] * self.world
        raising, _raise_on_sigterm = _raise_on_sigterm, False  # a SIGTERM now must not cut the naming short
        try:
            self.dist.all_gather_object(out, value)
        except Exception as exc:  # gloo: "Connection closed by peer" (a rank died), or the time-out
            raise self._lost(step, exc) from exc
        finally:
            _raise_on_sigterm = raising and not _sigterm_seen
        if _sigterm_seen:
            raise RankError(f"stopped by SIGTERM at the {step} step") if self.rank == 0 else Quiet(1)
        return out

    def _who(self, r: int) -> dict:
        try:
            if self.store is not None and self.store.check([f"who/{r}"]):
                return json.loads(self.store.get(f"who/{r}"))
        except Exception:  # noqa: S110
            pass
        return {}

    def _arrived(self, r: int, step: str) -> bool:
        try:
            return self.store is not None and self.store.check([f"arrived/{step}/{r}"])
        except Exception:
            return False

    def lost_ranks(self, step: str, *, alive_too: bool = False) -> list[tuple[int, str]]:
        """The ranks that did not arrive at ``step`` and are known dead (same host) or cannot be asked (another
        host) — or, with ``alive_too``, still running here (a hung rank) — each with how it is described."""
        lost = []
        for r in range(self.world):
            if r == self.rank or self._arrived(r, step):
                continue
            who = self._who(r)
            if who.get("host") == self.host:
                if _gone(int(who["pid"])):
                    lost.append((r, f"rank {r} (host {self.host}, pid {who['pid']}) died"))
                elif alive_too:
                    lost.append((r, f"rank {r} (host {self.host}, pid {who['pid']}) did not arrive in time"))
            else:
                where = f"host {who['host']}" if who else "unknown host"
                lost.append((r, f"rank {r} ({where}) did not arrive"))
        return lost

    def _lost(self, step: str, exc: BaseException) -> ReportgenError:
        lost = self.lost_ranks(step) or self.lost_ranks(step, alive_too="timed out" in str(exc).lower())
        if not self._reporter(lost):
            return Quiet(1)
        if not lost:
            return RankError(f"the run's processes lost each other at the {step} step ({_first_line(exc)}); "
                             f"torchrun's report names the process that failed. {_RERUN}")
        said = "; ".join(f"{what} before finishing its share: {self.share.get(r, 'its image groups')}"
                         for r, what in lost)
        return RankError(f"{said}. {_RERUN}")

    def _reporter(self, lost: list[tuple[int, str]]) -> bool:
        """Whether this rank prints the run's error: rank 0, or when rank 0 is gone, the first rank to claim it."""
        if self.rank == 0:
            return True
        if all(r != 0 for r, _ in lost):
            return False
        try:
            return self.store is not None and self.store.add("reporter", 1) == 1
        except Exception:
            return True

    def close(self) -> None:
        if self.owned and self.dist.is_initialized():
            self.dist.destroy_process_group()


_RERUN = "Finished groups are cached: run the same command again to compute only the rest"
_group: _Group | None = None


def _gone(pid: int) -> bool:
    """Whether process ``pid`` of this host has ended (a zombie not yet reaped by torchrun counts as ended)."""
    from reportgen.atomic import _alive

    if not _alive(pid):
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:][:1] in ("Z", "X")


def _base_store():
    """The launcher's key-value store at ``MASTER_ADDR:MASTER_PORT``: torchrun's agent serves it; launched without
    torchrun (``srun`` setting the variables itself), rank 0 serves it."""
    import torch.distributed as dist

    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT", "RANK") if not os.environ.get(v)]
    if missing:
        raise UsageError(f"WORLD_SIZE is {os.environ.get('WORLD_SIZE')} but {', '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} not set: launch the run with torchrun "
                         f"(docs/SCALING.md)")
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), int(os.environ["WORLD_SIZE"]),
                         is_master=not agent and int(os.environ["RANK"]) == 0, timeout=timedelta(seconds=_timeout()))


def _timeout() -> float:
    try:
        return float(os.environ.get("REPORTGEN_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    except ValueError:
        return float(DEFAULT_TIMEOUT_S)


def _join() -> _Group:
    global _group
    if _group is None:
        _group = _Group()
    return _group


def _leave() -> None:
    global _group
    if _group is not None:
        _group.close()
        _group = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _failure(g: _Group, exc: BaseException, context: str = "") -> _Failure:
    if isinstance(exc, ConfigError):
        lines = tuple(exc.problems)
    elif isinstance(exc, ReportgenError):
        lines = (str(exc),)
    elif isinstance(exc, _Stopped):
        lines = ("stopped by SIGTERM",)
    else:
        lines = (_first_line(exc),)
    if context:
        lines = (*lines[:-1], f"{lines[-1]} ({context})") if lines else (context,)
    code = getattr(exc, "exit_code", 1) if isinstance(exc, ReportgenError) else 1
    return _Failure(g.rank, g.host, int(code), lines, type(exc).__name__)


def _verdict(g: _Group, failures: list[_Failure], own: BaseException | None) -> BaseException:
    """The exception this rank raises when a step failed somewhere."""
    if g.rank != 0:
        if own is not None and not isinstance(own, (ReportgenError, _Stopped)):
            return own  # a bug: its traceback on the rank that hit it
        return Quiet(failures[0].exit_code)
    everywhere = len(failures) == g.world and len({f.lines for f in failures}) == 1
    if own is not None and (everywhere or (len(failures) == 1 and failures[0].rank == 0)):
        return own  # the same error on every rank (a config error), or rank 0's alone: as a one-process run says it
    stopped = [f for f in failures if f.kind == "_Stopped"]
    if len(stopped) == len(failures):
        lost = g.lost_ranks("compute")
        if lost:
            return RankError("; ".join(f"{what} before finishing its share: {g.share.get(r, 'its image groups')}"
                                       for r, what in lost) + f". {_RERUN}")
    real = [f for f in failures if f.kind != "_Stopped"] or failures
    if isinstance(own, ConfigError) and all(f.kind == "ConfigError" for f in real):
        return ConfigError([f"rank {f.rank} ({f.host}): {line}" for f in real for line in f.lines])
    text = "; ".join(f"rank {f.rank} ({f.host}): {f.text}" for f in real)
    return RankError(text, real[0].exit_code)


def agreed(step: Callable[[], T], *, what: str = "setup") -> T:
    """``step()`` on every rank; its result, or, if it failed on any rank, one error for all of them.

    Not under torchrun: just ``step()``. Under torchrun rank 0 raises the error (the step's own when every rank
    failed the same way, as with a config error; else one naming each failed rank) and the others raise ``Quiet``,
    so the error is printed once. A rank that failed with a bug (not a ``ReportgenError``) raises its own
    exception, so its traceback is seen.
    """
    if not requested():
        return step()
    g = _join()
    own: BaseException | None = None
    value = None
    try:
        value = step()
    except (Exception, _Stopped) as exc:
        own = exc
    outcomes = g.gather(None if own is None else _failure(g, own), what)
    failures = [o for o in outcomes if o is not None]
    if failures:
        raise _verdict(g, failures, own) from own
    return value  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------- the run


def _configure(cfg: RunConfig, g: _Group) -> RunConfig:
    """This rank's device (``cuda`` made ``cuda:LOCAL_RANK`` by ``set_device``, so results are labelled as in a
    one-process run) and CPU threads (the cores shared by this machine's processes)."""
    import torch

    device = cfg.run.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if torch.cuda.is_available():
            torch.cuda.set_device(g.local_rank % max(1, torch.cuda.device_count()))
        device = "cuda"  # the current device: this rank's
    else:
        torch.set_num_threads(_threads(g))
    return cfg.with_overrides(device=device) if device != cfg.run.device else cfg


def _threads(g: _Group) -> int:
    given = os.environ.get("REPORTGEN_THREADS")
    if given and given.isdigit() and int(given) > 0:
        return int(given)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, g.local_world))


def _describe_share(plan, groups: list[int], n_groups: int, batch_size: int) -> str:
    """A rank's groups in words: ``image groups 2, 4 of 4 (4 images: a.png … d.png)``."""
    if not groups:
        return "no image groups"
    chosen = set(groups)
    rels = [rec.rel for rec in plan.records if rec.index // batch_size in chosen]
    shown = ", ".join(str(gr + 1) for gr in groups[:12]) + (", …" if len(groups) > 12 else "")
    which = f"{rels[0]} … {rels[-1]}" if len(rels) > 1 else (rels[0] if rels else "none readable")
    return f"image group{'s' if len(groups) > 1 else ''} {shown} of {n_groups} ({len(rels)} images: {which})"


class _Progress:
    """One bar for the whole run on rank 0: every rank counts its images in the store, rank 0 shows the sum."""

    def __init__(self, g: _Group, show: bool):
        self.g, self.count, self.show = g, 0, show
        self.bar = None
        self._stop = threading.Event()
        self._thread = None

    def start(self, total: int) -> None:
        """Show the bar (rank 0) for ``total`` images, the work of every rank."""
        g = self.g
        if g.rank == 0 and self.show and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=f"images ({g.world} processes)", unit="img", leave=False)
            if g.store is not None:
                self._thread = threading.Thread(target=self._poll, daemon=True)
                self._thread.start()

    def one(self) -> None:
        self.count += 1
        if self.g.store is not None and self.g.rank != 0:
            try:
                self.g.store.add("images", 1)
            except Exception:  # noqa: S110 - progress only
                pass
        elif self.bar is not None and self._thread is None:
            self.bar.update(1)

    def _poll(self) -> None:
        while not self._stop.wait(0.3):
            try:
                others = self.g.store.add("images", 0)
            except Exception:
                return
            if self.bar is not None:
                self.bar.n = min(self.bar.total, others + self.count)
                self.bar.refresh()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self.bar is not None:
            self.bar.close()


_sigterm_seen = False
_raise_on_sigterm = True


def _on_sigterm(signum, frame):  # noqa: ARG001
    """SIGTERM during a run: stop the work (once; not while the ranks meet, where a dead rank is being named)."""
    global _sigterm_seen, _raise_on_sigterm
    _sigterm_seen = True
    if _raise_on_sigterm:
        _raise_on_sigterm = False  # once: the cleanup and the error message are not interrupted
        raise _Stopped()


def _after_failure(signum, frame):  # noqa: ARG001
    """A failed worker is about to print its error and exit: torchrun's SIGTERM must not cut the message off."""


def _compute_share(cfg: RunConfig, g: _Group, model, the_plan, stats: RunStats, progress: _Progress) -> None:
    """This rank's share: its cold groups through the model into the cache, its images' figures into the figure
    cache (drawn in a scratch folder of its own, removed after)."""
    from reportgen.cache import TensorCache
    from reportgen.draw import DrawStage
    from reportgen.gather import gather
    from reportgen.images import Skipped

    bs = cfg.run.batch_size
    cache = TensorCache(cfg.run.cache_dir, stats)
    mine = tuple(gr for gr in the_plan.cold_groups
                 if share_of(the_plan.records[gr[0]].index // bs, g.world) == g.rank)
    sub = replace(the_plan, cold_groups=mine, warm=())
    scratch = Path(cfg.run.cache_dir) / "figures" / temp_name("tmp", f"rank{g.rank}")
    scratch.mkdir(parents=True, exist_ok=True)
    drawing = None
    try:
        if g.rank == g.world - 1:  # the kernel galleries and filters (cached for rank 0) on a rank with fewest groups
            from reportgen.layerfigs import filter_figures, kernel_galleries

            kernel_galleries(cfg, model, cache, scratch)
            filter_figures(cfg, model, cache, scratch)
        drawing = DrawStage(cfg, model.labels, sub, scratch, stats, on_image=progress.one, cache=cache, model=model)
        if getattr(drawing, "table", None) is not None:  # dataset-wide colour scales: rank 0 draws, once all known
            drawing.close()
            drawing = None
            progress.start(len(the_plan.cold))
            for item in gather(sub, model, cache, stats, cfg.run, display_size=cfg.report.image_size, warm=[]):
                progress.one()
                del item
            return
        warm = [p for p in the_plan.warm
                if share_of(the_plan.records[p].index // bs, g.world) == g.rank]
        undrawn = drawing.undrawn(warm)
        progress.start(len(the_plan.cold) + (len(drawing.undrawn(list(the_plan.warm))) if g.rank == 0 else 0))
        drawing.start(model.loaded().device.type if mine else "none")
        for item in gather(sub, model, cache, stats, cfg.run, display_size=cfg.report.image_size, warm=undrawn):
            if isinstance(item, Skipped):
                progress.one()
            else:
                drawing.submit(item)
        drawing.finish()
        log.debug("rank %d: computed %d group(s) and drew %d cached image(s)", g.rank, len(mine), len(undrawn))
    finally:
        if drawing is not None:
            drawing.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _merged(all_stats: list[dict], world: int) -> RunStats:
    """The ranks' stats as one: counts summed, seconds the slowest rank's, ``processes`` the ranks."""
    merged = RunStats()
    for f in fields(RunStats):
        values = [s[f.name] for s in all_stats if f.name in s]
        if f.name == "seconds":
            merged.seconds = {k: max(v.get(k, 0.0) for v in values) for k in values[0]} if values else merged.seconds
        elif f.name == "draw_workers":
            merged.draw_workers = max(values, default=0)
        elif f.type in ("int", int) and not f.name.startswith("images_"):
            setattr(merged, f.name, sum(values))
    merged.processes = world
    return merged


def run(cfg: RunConfig, *, force: bool, progress: bool, model, pdf_job, publish: Callable[..., RunResult]) -> RunResult:
    """``runner.run`` under torchrun: every rank computes and draws its share, then rank 0 publishes.

    Args:
        force, progress, model, pdf_job: as ``runner.run`` (the PDF job is cancelled on ranks other than 0).
        publish: the one-process run (``runner.run``), called on rank 0 with ``prior=Prior(...)``.

    Returns:
        On rank 0 the published report's ``RunResult``; on the others, once their share is done, one with their
        share's stats (the report is rank 0's to write).

    Raises:
        ReportgenError: on rank 0, what failed on any rank (naming it); ``Quiet`` on the others.
    """
    from dataclasses import asdict

    from reportgen.outfolder import check_replaceable
    from reportgen.plan import plan
    from reportgen.prepare import prepare
    from reportgen.runner import _check_placement, _discover, early_checks

    global _sigterm_seen, _raise_on_sigterm
    t_start, started = time.perf_counter(), datetime.now(timezone.utc)
    _sigterm_seen, _raise_on_sigterm = False, True
    g = _join()
    if g.rank != 0 and pdf_job is not None:
        pdf_job.cancel()
        pdf_job = None
    previous = signal.getsignal(signal.SIGTERM)
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:
        signal.signal(signal.SIGTERM, _on_sigterm)
    stats = RunStats()
    bar: _Progress | None = None
    ok = False
    try:
        def setup():
            from reportgen.cache import TensorCache

            local = _configure(cfg, g)
            _check_placement(local)
            handle = model or prepare(local)
            records, _ = _discover(local)
            early_checks(local, handle, records)  # metadata, boxes, figures: refused before the work
            if g.rank == 0:  # refused now, not after the work (only rank 0 ever writes the output)
                check_replaceable(local.run.output, force)
            the_plan = plan(local, handle.card, handle.labels, records, TensorCache(local.run.cache_dir, stats))
            if g.rank == 0:
                handle.remember()
            return local, handle, the_plan

        local, handle, the_plan = agreed(setup, what="setup")
        bs = local.run.batch_size
        n_groups = (len(the_plan.records) + len(the_plan.known_bad) + bs - 1) // bs
        n_groups = max(n_groups, 1 + max((rec.index // bs for rec in the_plan.records), default=-1))
        for r in range(g.world):
            g.share[r] = _describe_share(the_plan, [gr for gr in range(n_groups) if share_of(gr, g.world) == r],
                                         n_groups, bs)
        log.debug("rank %d of %d (%s): %s", g.rank, g.world, g.host, g.share[g.rank])
        bar = _Progress(g, progress)
        own: BaseException | None = None
        try:
            _compute_share(local, g, handle, the_plan, stats, bar)
        except (Exception, _Stopped) as exc:
            own = exc
        outcome = None if own is None else _failure(g, own, g.share[g.rank])
        outcomes = g.gather((outcome, asdict(stats), handle.built), "compute")
        bar.close()
        failures = [o for o, _, _ in outcomes if o is not None]
        if failures:
            raise _verdict(g, failures, own) from own
        if g.rank != 0:  # its share is done; rank 0 publishes (torchrun returns once it has)
            _leave()
            ok = True
            stats.processes = g.world
            output = local.run.output
            return RunResult(output, output / "report.html", None, output / "manifest.json", stats)
        merged = _merged([s for _, s, _ in outcomes], g.world)
        if any(built for _, _, built in outcomes):
            handle.loaded()  # the run used the model (on some rank): the report names its device, as one process would
        result = publish(local, force=force, progress=progress, model=handle, pdf_job=pdf_job,
                         prior=Prior(merged, t_start, started))
        _leave()
        ok = True
        return result
    except _Stopped:
        raise RankError("stopped by SIGTERM before the run's processes had met") from None
    finally:
        if bar is not None:
            bar.close()
        if main_thread:  # a failed torchrun worker exits in a moment: let it say why first
            failed_worker = not ok and "TORCHELASTIC_RUN_ID" in os.environ
            signal.signal(signal.SIGTERM, _after_failure if failed_worker else previous)
