"""Safe handling of FunctionGraph code packages (zip archives) for the Python runtime.

A code package is untrusted input: it comes from whoever can create functions, and it
is unpacked on the machine that runs the service. So extraction refuses everything a
hostile archive can use against the host: paths that escape the target directory,
symlinks (which turn later writes into writes elsewhere), special files, encrypted
entries we could not inspect, compression methods whose decompressors cannot be
bounded, and zip bombs. Zip bombs are caught twice: by the sizes the archive *declares*
(cheap, before anything is written) and by the bytes it *actually* inflates to, because
the declared sizes are attacker-controlled and may lie.

Limits default to FunctionGraph's: 1.5 GB unzipped code and 30,000 files per package.
"""

from __future__ import annotations

import copy
import importlib.machinery
import io
import os
import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path

__all__ = [
    "DEFAULT_MAX_FILES",
    "DEFAULT_MAX_UNCOMPRESSED",
    "CodePackageError",
    "check_handler",
    "extract_zip",
    "inline_to_zip",
]

DEFAULT_MAX_UNCOMPRESSED = 1_536 * 1024 * 1024  # FunctionGraph: unzipped code <= 1.5 GB
DEFAULT_MAX_FILES = 30_000  # FunctionGraph: <= 30000 files per (dependency) package

_CHUNK = 64 * 1024
# Only methods whose decompressor we can drive with a bounded output size. zipfile feeds
# bzip2/lzma data to an unbounded decompress() call, so one small chunk can inflate to
# gigabytes in memory before any of our checks sees it.
_ALLOWED_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_HANDLER_RE = re.compile(rf"^{_IDENT}(?:\.{_IDENT})+$")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")


class CodePackageError(ValueError):
    """The code package or handler string is unusable; the message says exactly why."""


def extract_zip(
    data: bytes,
    dest: Path,
    *,
    max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED,
    max_files: int = DEFAULT_MAX_FILES,
) -> None:
    """Unpack a code package into ``dest`` after validating every entry.

    All metadata checks run before the first byte is written, so a rejected archive
    normally leaves nothing behind. Content checks (real inflated size, CRC) can only
    fail during extraction; then ``dest`` is removed again if this call created it.
    Callers should extract into a fresh directory and treat it as garbage on error.
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise CodePackageError(f"code package is not a valid zip archive: {exc}") from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > max_files:
            raise CodePackageError(f"code package has {len(infos)} entries, more than the limit of {max_files}")
        plan = [(info, _check_entry(info)) for info in infos]
        declared = sum(info.file_size for info in infos if not info.is_dir())
        if declared > max_uncompressed:
            raise CodePackageError(
                f"code package declares {declared} bytes uncompressed, over the limit of {max_uncompressed} bytes"
            )
        created = not dest.exists()
        try:
            _write_entries(zf, plan, dest, max_uncompressed)
        except BaseException:
            if created:
                shutil.rmtree(dest, ignore_errors=True)
            raise


def _check_entry(info: zipfile.ZipInfo) -> tuple[str, ...]:
    """Reject an entry whose metadata is unsafe; return its path components."""
    name = info.filename
    if info.flag_bits & 0x1:
        raise CodePackageError(f"entry {name!r} is encrypted; encrypted code packages are not supported")
    if info.compress_type not in _ALLOWED_METHODS:
        raise CodePackageError(
            f"entry {name!r} uses unsupported compression method {info.compress_type} "
            "(only stored and deflated are accepted)"
        )
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise CodePackageError(f"entry {name!r} is a symbolic link; symlinks are not allowed")
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise CodePackageError(f"entry {name!r} is a special file (mode {oct(mode)}); not allowed")
    if not name or "\x00" in name:
        raise CodePackageError(f"entry name {name!r} is empty or contains a NUL byte")
    # Archives made on Windows may use backslashes; treat them as separators for the
    # safety checks so "..\\..\\x" cannot slip through.
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or _DRIVE_RE.match(normalized):
        raise CodePackageError(f"entry {name!r} has an absolute path; path traversal is not allowed")
    parts = tuple(p for p in normalized.split("/") if p not in ("", "."))
    if ".." in parts:
        raise CodePackageError(f"entry {name!r} escapes the code directory ('..'); path traversal")
    if not parts and not info.is_dir():
        raise CodePackageError(f"entry {name!r} has no usable path")
    return parts  # () for a "./" directory entry, which some zip tools emit: skipped


def _write_entries(
    zf: zipfile.ZipFile,
    plan: list[tuple[zipfile.ZipInfo, tuple[str, ...]]],
    dest: Path,
    max_uncompressed: int,
) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(dest)
    total = 0
    for info, parts in plan:
        if not parts:
            continue
        target = os.path.join(root, *parts)
        # Backstop for the name checks: the final path must stay inside dest even if a
        # directory on the way is (somehow) a symlink.
        parent = os.path.realpath(os.path.dirname(target))
        if parent != root and not parent.startswith(root + os.sep):
            raise CodePackageError(f"entry {info.filename!r} resolves outside the code directory")
        try:
            if info.is_dir():
                os.makedirs(target, mode=0o755, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            total += _write_file(zf, info, target, max_uncompressed - total, max_uncompressed)
        except (FileExistsError, IsADirectoryError, NotADirectoryError) as exc:
            raise CodePackageError(f"entry {info.filename!r} collides with another entry ({exc.strerror})") from exc


def _write_file(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: str, budget: int, max_uncompressed: int) -> int:
    """Inflate one entry, counting the bytes really produced; return that count.

    zipfile trusts the declared size and silently stops there, which would hide a lying
    entry behind a CRC error. Opening a copy whose declared size is the remaining budget
    + 1 lets us observe the real size and name the problem precisely.
    """
    probe = copy.copy(info)
    probe.file_size = budget + 1
    mode = 0o755 if (info.external_attr >> 16) & 0o111 else 0o644
    written = 0
    try:
        with zf.open(probe) as src, open(target, "xb") as dst:
            os.chmod(target, mode)
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                if written > info.file_size:
                    raise CodePackageError(
                        f"entry {info.filename!r} inflates past its declared size of {info.file_size} bytes (zip bomb?)"
                    )
                if written > budget:
                    raise CodePackageError(f"code package inflates to more than the limit of {max_uncompressed} bytes")
                dst.write(chunk)
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise CodePackageError(f"entry {info.filename!r} is corrupt: {exc}") from exc
    if written != info.file_size:
        raise CodePackageError(f"entry {info.filename!r} holds {written} bytes but declares {info.file_size}")
    return written


def inline_to_zip(filename: str, source: bytes) -> bytes:
    """Wrap inline code (FunctionGraph ``code_type: inline``) into a one-file package.

    The zip is byte-for-byte deterministic (fixed timestamp and mode) so the same source
    always yields the same code digest and does not needlessly retire warm workers.
    """
    if not filename or filename != filename.strip():
        raise CodePackageError(f"inline file name {filename!r} is empty or has surrounding spaces")
    info = zipfile.ZipInfo(filename, date_time=(1980, 1, 1, 0, 0, 0))
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    _check_entry(info)
    if info.is_dir():
        raise CodePackageError(f"inline file name {filename!r} names a directory")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(info, source)
    return buf.getvalue()


def check_handler(code_dir: Path, handler: str) -> None:
    """Verify that ``handler`` (``module.function``) names a module present in ``code_dir``.

    Done at deploy time so a typo is reported when the function is created rather than
    as a LOAD_FAILED on every invocation. Only the module file is checked: whether the
    function exists needs an import, i.e. running user code, which belongs in a worker.
    """
    if not _HANDLER_RE.match(handler):
        raise CodePackageError(f"handler {handler!r} is not of the form module.function (e.g. index.handler)")
    if not code_dir.is_dir():
        raise CodePackageError(f"code directory {str(code_dir)!r} does not exist")
    parts = handler.split(".")[:-1]
    base = code_dir.joinpath(*parts)
    rel = "/".join(parts)
    suffixes = [
        *importlib.machinery.SOURCE_SUFFIXES,
        *importlib.machinery.BYTECODE_SUFFIXES,
        *importlib.machinery.EXTENSION_SUFFIXES,
    ]
    candidates = [base.parent / (base.name + s) for s in suffixes]
    candidates.append(base / "__init__.py")
    if not any(c.is_file() for c in candidates):
        raise CodePackageError(
            f"handler {handler!r}: module file {rel}.py (or {rel}/__init__.py) not found in the code package"
        )
