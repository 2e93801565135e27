"""Tasks: what is generated, from which condition, and which loss terms guide it."""

from __future__ import annotations

from dataclasses import dataclass

from sah.aligner import Term
from sah.errors import SahError
from sah.media import Modality

A, V, IMG, T = Modality.AUDIO, Modality.VIDEO, Modality.IMAGE, Modality.TEXT


@dataclass(frozen=True)
class Task:
    name: str
    generates: tuple[Modality, ...]
    condition: Modality | None = None
    guided: bool = True
    description: str = ""


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("joint", (A, V), None, True, "text → video + audio, each guided toward the other (triangle loss)"),
        Task("v2a", (A,), V, True, "video [+ text] → audio"),
        Task("a2v", (V,), A, True, "audio [+ text] → video"),
        Task("i2a", (A,), IMG, True, "image [+ text] → audio"),
        Task("t2a", (A,), None, False, "text → audio, unguided"),
        Task("t2v", (V,), None, False, "text → video, unguided"),
    )
}

_BY_CONDITION = {V: "v2a", A: "a2v", IMG: "i2a"}


def infer_task(requested: str, conditions: dict[Modality, str], audio_generator: str, video_generator: str) -> Task:
    """The task named by `requested`, or inferred from the conditions and generators given."""
    given = [m for m, path in conditions.items() if path]
    if len(given) > 1:
        raise SahError(f"give at most one condition (--video, --audio or --image), got {len(given)}: "
                       + ", ".join(f"--{m.value}" for m in given))
    if requested == "auto":
        if given:
            task = TASKS[_BY_CONDITION[given[0]]]
        elif audio_generator and video_generator:
            task = TASKS["joint"]
        elif audio_generator or video_generator:
            task = TASKS["t2a" if audio_generator else "t2v"]
        else:
            raise SahError("no generator configured: pass --gen-audio and/or --gen-video")
    else:
        task = TASKS[requested]
        if task.condition is None and given:
            raise SahError(f"task {task.name} takes no condition, but --{given[0].value} was given")
        if task.condition is not None and task.condition not in given:
            wrong = f", not --{given[0].value}" if given else ""
            raise SahError(f"task {task.name} needs --{task.condition.value} PATH{wrong}")
    for modality in task.generates:
        if not (audio_generator if modality == A else video_generator):
            raise SahError(f"task {task.name} needs a {modality.value} generator (--gen-{modality.value} NAME)")
    return task


def terms_for(task: Task, weights: dict[str, float], has_prompt: bool, binder_has_text: bool = True) -> list[Term]:
    """The loss terms of a task: the paper's dual loss (condition + text) for V2A, A2V and I2A,
    its triangle loss (audio↔video + each↔text) for joint. Text terms need a prompt and a binder
    that embeds text."""
    if not task.guided:
        return []
    terms: list[Term] = []
    if task.condition is not None:
        terms.append(Term(task.generates[0], "condition", weights["condition"]))
    if len(task.generates) == 2:
        terms.append(Term(A, V.value, weights["pair"]))
    if has_prompt and binder_has_text:
        terms.extend(Term(m, "text", weights["text"]) for m in task.generates)
    return [t for t in terms if t.weight > 0]


def needed_modalities(task: Task, terms: list[Term]) -> set[Modality]:
    """What the binder must embed for these terms."""
    needed = {t.generated for t in terms}
    needed |= {Modality(t.target) for t in terms if t.target in ("audio", "video")}
    if any(t.target == "condition" for t in terms) and task.condition is not None:
        needed.add(task.condition)
    if any(t.target == "text" for t in terms):
        needed.add(T)
    return needed
