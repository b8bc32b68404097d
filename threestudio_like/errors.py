"""The one hierarchy of user-facing errors, each with its exit status and outcome category.

Every problem a user can meet ends as ``error: <message>`` and an exit status, decided here and
mapped in one place (:func:`exit_code_of`, used by the command line and the batch runner):

* **2, input problems** (:class:`UserInputError`): a config key or value, an image, weights or a
  checkpoint that cannot be used. Running the same command again fails the same way, so the batch
  runner never retries them.
* **1, run failures** (:class:`RunFailure`): a non-finite loss, a full disk, a mesh that cannot be
  extracted. The trial folder keeps the last good checkpoint.

``repeats`` says whether the same command would fail the same way again (input problems, an
export setting that cannot work); the batch runner retries only failures that do not repeat.

``category`` is the word written to a run's ``status.json`` (``config``, ``weights``,
``checkpoint``, ``nonfinite``, ``disk-full``, ``export``, ...); :func:`category_of` extends it to
foreign exceptions (out of memory, interrupts, crashes). :func:`did_you_mean` is the one
"closest valid name" hint of the product.
"""
from __future__ import annotations

import difflib
import errno
from pathlib import Path
from typing import Iterable, Sequence, Union


def did_you_mean(word: str, candidates: Iterable[str], cutoff: float = 0.6, prefix: str = "") -> str:
    """``" Did you mean '<prefix><closest>'?"`` for the closest of ``candidates``, else ``""``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=cutoff)
    return f" Did you mean '{prefix}{close[0]}'?" if close else ""


def unknown_key_error(key: str, valid: Sequence[str], where: str) -> "ConfigError":
    """The error of an unknown config key ``<where>.<key>``: the closest valid key and all of them."""
    prefix = f"{where}." if where else ""
    hint = did_you_mean(key.split(".")[-1], valid, cutoff=0.5, prefix=prefix)
    return ConfigError(f"Unknown config key '{prefix}{key}'.{hint} Valid keys here: {', '.join(sorted(valid))}.")


class ThreestudioLikeError(Exception):
    """Base of every error shown to the user as ``error: <message>``."""

    exit_code: int = 1
    """Exit status of the command that stops on this error."""
    category: str = "crash"
    """Outcome word recorded in ``status.json`` and by the batch runner."""
    repeats: bool = False
    """Whether running the same command again fails the same way (then retrying is futile)."""


# ------------------------------------------------------------------------------------------
# input problems: exit 2, never retried


class UserInputError(ThreestudioLikeError):
    """Input that cannot be used as given; the message names the problem and the fix."""

    exit_code = 2
    category = "config"
    repeats = True


class ConfigError(UserInputError, ValueError):
    """A config problem the user can fix; the message names the key and the fix."""


class FieldError(ConfigError):
    """A bad value of one field, raised by a config's ``validate``; the config loader adds the
    part's path (``system.guidance.``) in front of ``field``."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field} {problem}")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def at_least(field: str, value: object, low: float, integer: bool = True) -> None:
    """:class:`FieldError` unless ``value`` is a number (an integer where ``integer``) >= ``low``."""
    if not _number(value) or (integer and value != int(value)) or value < low:  # type: ignore[operator]
        raise FieldError(field, f"must be >= {low}{' (an integer)' if integer else ''}, got {value!r}")


def in_range(field: str, value: object, low: float, high: float, pair: bool = False, open_low: bool = False) -> None:
    """:class:`FieldError` unless ``value`` is a number in ``[low, high]`` (``(low, high]`` with
    ``open_low``) or, with ``pair``, a ``[min, max]`` pair of such numbers with ``min <= max``."""
    iterable = hasattr(value, "__iter__") and not isinstance(value, (str, bytes))
    values = list(value) if pair and iterable else [value]  # type: ignore[call-overload]
    lower = f"{low} {'<' if open_low else '<='} "
    upper = "" if high == float("inf") else f" <= {high}"
    shape = f"[min, max] with {lower}min <= max{upper}" if pair else f"a number with {lower}x{upper}"
    fits = [_number(v) and (low < v if open_low else low <= v) and v <= high for v in values]
    if (pair and len(values) != 2) or not all(fits) or (pair and values[0] > values[1]):
        raise FieldError(field, f"must be {shape}, got {_plain(value)!r}")


def _plain(value: object) -> object:
    """Lists for list-like config nodes (ListConfig), so messages show ``[0, 0]``."""
    return list(value) if hasattr(value, "__iter__") and not isinstance(value, (str, bytes, dict)) else value  # type: ignore[call-overload]


class ImageLoadError(ConfigError):
    """An input image (or mask) that is missing, unreadable or unusable."""


class JobFileError(ConfigError):
    """A job file that cannot run; ``problems`` lists each one, naming the job and field."""

    def __init__(self, source: Union[str, Path], problems: Sequence[str]) -> None:
        self.source = str(source)
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in {self.source}:\n{lines}")


class WeightsError(UserInputError):
    """Model weights that cannot be found, read safely or converted."""

    category = "weights"


class MissingWeightsError(WeightsError, FileNotFoundError):
    """Weights could not be found (locally, in the Hugging Face cache, or online)."""


class UnsafeCheckpointError(WeightsError, RuntimeError):
    """A pickled file holds Python objects besides tensors and was not loaded."""


class ConversionError(WeightsError, ValueError):
    """A state dict does not have the layout a converter expects."""


class CheckpointError(UserInputError, RuntimeError):
    """A training checkpoint (``resume=``) that is missing, damaged, unsafe or from another run."""

    category = "checkpoint"


class BatchLockedError(UserInputError, RuntimeError):
    """Another batch runner holds this batch folder."""

    category = "locked"


class SlurmUnavailable(UserInputError, RuntimeError):
    """submitit is not installed, or there is no SLURM here."""


# ------------------------------------------------------------------------------------------
# run failures: exit 1


class RunFailure(ThreestudioLikeError):
    """A run that started but could not finish; its last good checkpoint is kept."""


class NonFiniteLossError(RunFailure, RuntimeError):
    """A loss became NaN/Inf: training stops and the last good checkpoint is kept."""

    category = "nonfinite"


class DiskFullError(RunFailure, OSError):
    """Writing failed for lack of space; the previous checkpoint is intact."""

    category = "disk-full"


class IsosurfaceError(RunFailure, ValueError):
    """No surface could be extracted at the requested density level."""

    category = "export"
    repeats = True


# ------------------------------------------------------------------------------------------
# mapping any exception to an outcome

INTERRUPTED_EXIT = 130
"""Exit status of a run stopped by Ctrl-C (128 + SIGINT)."""
TERMINATED_EXIT = 143
"""Exit status of a run stopped by SIGTERM (128 + SIGTERM)."""


def category_of(exc: BaseException) -> str:
    """The outcome word of any exception (ours, out of memory, interrupts, crashes)."""
    if isinstance(exc, ThreestudioLikeError):
        return exc.category
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk-full"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return "oom"
    if isinstance(exc, (KeyboardInterrupt, SystemExit)) or type(exc).__name__ == "SIGTERMException":
        return "interrupted"  # Lightning turns Ctrl-C into SystemExit after saving
    return "crash"


def will_repeat(exc: BaseException) -> bool:
    """Whether the same command would fail the same way again after ``exc`` (see the classes)."""
    return bool(getattr(exc, "repeats", False)) if isinstance(exc, ThreestudioLikeError) else False


def exit_code_of(exc: BaseException) -> int:
    """The exit status a command ends with after ``exc``."""
    if isinstance(exc, ThreestudioLikeError):
        return exc.exit_code
    if type(exc).__name__ == "SIGTERMException":
        return TERMINATED_EXIT
    if category_of(exc) == "interrupted":
        return INTERRUPTED_EXIT
    return 1
