"""Pre-load files and folders into memory as overlapping chunks, embedded in batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from offline_agent.errors import ConfigError, StorageError
from offline_agent.memory.longterm import LongTermMemory

CHUNK_CHARS = 800
"""About 200 word pieces of English: inside all-MiniLM-L6-v2's 256-piece window."""
OVERLAP_CHARS = 200
BATCH = 64
_BINARY_PROBE = 8192
_BREAKS = ("\n\n", "\n", ". ", " ")

Progress = Callable[[int, int], None]
"""Called with (chunks done, chunks in all) before the first batch and after each one."""


def chunk_spans(
    text: str, size: int = CHUNK_CHARS, overlap: int = OVERLAP_CHARS
) -> list[tuple[int, int]]:
    """(start, end) offsets of chunks of at most `size` characters covering `text`.

    Each chunk ends at a paragraph, line, sentence or word break when one lies in its second
    half, and the next one starts about `overlap` characters before that end, at a word.
    """
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError("need size > 0 and 0 <= overlap < size")
    spans: list[tuple[int, int]] = []
    start, n = 0, len(text)
    while start < n:
        end = min(start + size, n)
        if end < n:
            end = _break_before(text, max(start + overlap, start + size // 2) + 1, end)
        spans.append((start, end))
        if end >= n:
            break
        start = max(_word_start(text, end - overlap, end), start + 1)
    return spans


def _break_before(text: str, low: int, high: int) -> int:
    """The end of the last break in text[low:high] of the strongest kind found, else high."""
    for brk in _BREAKS:
        at = text.rfind(brk, low, high)
        if at >= 0:
            return at + len(brk)
    return high


def _word_start(text: str, low: int, high: int) -> int:
    """The first position in [low, high) just after whitespace, else low."""
    if low <= 0 or text[low - 1].isspace():
        return max(low, 0)
    for i in range(low, high):
        if text[i].isspace():
            return i + 1
    return low


def chunk_text(text: str, size: int = CHUNK_CHARS, overlap: int = OVERLAP_CHARS) -> list[str]:
    """The non-blank chunks of `text`, stripped (see `chunk_spans`)."""
    chunks = (text[a:b].strip() for a, b in chunk_spans(text, size, overlap))
    return [c for c in chunks if c]


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Each file named, and each file under each folder named, skipping hidden ones; sorted."""
    for path in paths:
        if path.is_dir():
            for sub in sorted(path.rglob("*")):
                hidden = any(part.startswith(".") for part in sub.relative_to(path).parts)
                if sub.is_file() and not hidden:
                    yield sub
        elif path.is_file():
            yield path
        else:
            raise StorageError(f"{path} is neither a file nor a folder")


def read_text_file(path: Path) -> str | None:
    """The file's text as UTF-8; None for a binary or undecodable file."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise StorageError(f"cannot read {path}: {err.strerror}") from None
    if b"\0" in data[:_BINARY_PROBE]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True)
class Chunk:
    """A piece of a file."""

    source: Path
    number: int
    content: str

    @property
    def text(self) -> str:
        """The stored text: a line naming the file, then the content."""
        return f"From {self.source}:\n{self.content}"


@dataclass
class IngestReport:
    """What an ingest did."""

    files: int = 0
    chunks: int = 0
    added: int = 0
    skipped: list[Path] = field(default_factory=list)


def collect_chunks(
    paths: Iterable[Path], size: int = CHUNK_CHARS, overlap: int = OVERLAP_CHARS
) -> tuple[list[Chunk], IngestReport]:
    """Chunks of every text file under `paths`, with a report of files read and skipped."""
    report = IngestReport()
    chunks: list[Chunk] = []
    for path in iter_files(paths):
        text = read_text_file(path)
        if text is None:
            report.skipped.append(path)
            continue
        report.files += 1
        chunks.extend(Chunk(path, i, c) for i, c in enumerate(chunk_text(text, size, overlap)))
    report.chunks = len(chunks)
    return chunks, report


def ingest(
    memory: LongTermMemory,
    paths: Iterable[Path],
    *,
    size: int = CHUNK_CHARS,
    overlap: int = OVERLAP_CHARS,
    batch: int = BATCH,
    progress: Progress | None = None,
) -> IngestReport:
    """Store every chunk of the files under `paths` in `memory`, `batch` chunks per save.

    Chunks already stored are not embedded again, and each batch is saved as it is done:
    an interrupted ingest, run again, embeds only what is new or changed. ConfigError when
    the paths hold no text at all (before anything is embedded).
    """
    paths = list(paths)
    chunks, report = collect_chunks(paths, size, overlap)
    return store_chunks(memory, paths, chunks, report, batch=batch, progress=progress)


def store_chunks(
    memory: LongTermMemory,
    paths: Sequence[Path],
    chunks: Sequence[Chunk],
    report: IngestReport,
    *,
    batch: int = BATCH,
    progress: Progress | None = None,
) -> IngestReport:
    """Store `chunks` (what `collect_chunks` made of `paths`) as `ingest` does, counting
    what was added into `report`; for a caller that looks at the chunks before choosing
    the memory's embedder."""
    if not chunks:
        shown = ", ".join(str(p) for p in paths[:3]) + (", ..." if len(paths) > 3 else "")
        binary = f" ({len(report.skipped)} files not UTF-8 text)" if report.skipped else ""
        raise ConfigError(f"nothing to ingest in {shown}: no text{binary}")
    if progress is not None:
        progress(0, len(chunks))
    for first in range(0, len(chunks), batch):
        part = chunks[first : first + batch]
        report.added += memory.remember_many(
            [c.text for c in part],
            kind="document",
            metadata=[{"source": str(c.source), "chunk": c.number} for c in part],
            # The header lets the model tell a recalled document from its own past steps,
            # but embedded it would pull every chunk of a folder towards its path.
            embed=[c.content for c in part],
        )
        if progress is not None:
            progress(first + len(part), len(chunks))
    return report
