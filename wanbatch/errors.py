"""Every typed error of the project, each subclassing the builtin it means."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FieldError:
    """One problem in a prompt file: where it is (item index and id, field) and why."""

    message: str
    index: int | None = None  # position in `prompts`, None for file-level problems
    item_id: str | None = None
    field: str | None = None

    def describe(self) -> str:
        where = []
        if self.index is not None:
            where.append(f"item {self.index}")
        if self.item_id is not None:
            where.append(f"id {self.item_id!r}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        return f"{', '.join(where) or 'file'}: {self.message}"

    def to_dict(self) -> dict:
        return {"index": self.index, "id": self.item_id, "field": self.field, "message": self.message}


class PromptFileError(ValueError):
    """A prompt file failed validation; `errors` lists every problem found."""

    def __init__(self, errors: list[FieldError]):
        self.errors = list(errors)
        lines = "\n".join(f"  - {e.describe()}" for e in self.errors)
        super().__init__(f"{len(self.errors)} error(s) in prompt file:\n{lines}")


class SpecError(ValueError):
    """A run spec (contract 4) is invalid or an array index is out of its range: never retried."""


class ModelSourceError(FileNotFoundError):
    """The model could not be found locally or fetched from its source."""

    def __init__(self, message: str, *, repo_id: str | None = None):
        self.repo_id = repo_id
        super().__init__(message)


@dataclass
class InterruptedRender(Exception):
    """The render stopped early (SIGTERM, Spot notice); state was saved and a retry resumes it."""

    reason: str
    step: int | None = None
    details: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return f"interrupted ({self.reason}) at step {self.step}"


class TransientError(ConnectionError):
    """A failure worth retrying (throttled or unreachable S3): the job exits 75 and Batch retries it."""


class ConfigError(ValueError):
    """A deployment setting (an environment variable the stack sets) is missing or malformed."""


class CLIError(ValueError):
    """A command line that cannot work (bad option combination, unreadable input): exit 2, no traceback."""


class DeploymentError(LookupError):
    """The deployed stack (or one of its outputs) cannot be found, or AWS refused the CLI: exit 3."""


class RunNotFoundError(LookupError):
    """No run with this id (no runs/<run_id>/spec.json) in the deployment's bucket: exit 4."""


class WaitTimeout(TimeoutError):
    """The CLI gave up waiting (for the submit Lambda's run.json, a job): exit 5."""


class RejectedError(ValueError):
    """The submit Lambda rejected the uploaded prompt file; `messages` are its rejection record's lines."""

    def __init__(self, key: str, messages: list[str]):
        self.key, self.messages = key, list(messages)
        lines = "\n".join(f"  - {m}" for m in self.messages)
        super().__init__(f"the deployment rejected {key}:\n{lines}")


class RenderFailed(RuntimeError):
    """A local render finished without a video for every item (details in its error records)."""
