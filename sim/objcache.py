"""A compile cache for Verilator's runtime library, shared by every Verilator build.

Each Verilator model is linked with the same runtime sources (``verilated.cpp``,
``verilated_vpi.cpp``, ``verilated_threads.cpp``, ``verilated_dpi.cpp`` and
cocotb's ``verilator.cpp``), and ``verilated.mk`` compiles them again in every
build directory: about 20 s of CPU a build, against 2 to 60 s for the model
itself. :func:`dynsparse.sim.runner.run_cocotb` names this module as
``verilated.mk``'s ``OBJCACHE`` (the command prefixed to each compile), so::

    python -m dynsparse.sim.objcache c++ -Os ... -c -o verilated.o .../verilated.cpp

compiles a runtime source once and copies its object (and the ``-MMD``
dependency file) into every later build directory. A compile is cached only if
its source and every file it read lie outside the current directory (the
model's own files, and cocotb's ``verilator.cpp``, which includes the model's
header, are never cached), and its key is the SHA-256 of the command line, the compiler
executable, the source and every header beside it, so another Verilator or
cocotb version, compiler or flag set gets objects of its own. The cache lives
in ``$DYNSPARSE_OBJCACHE`` (``build/objcache`` by default); entries are written
under a temporary name and renamed, so parallel builds share it safely.
A user's own ``OBJCACHE`` (``ccache``) is left in place.
"""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path


__all__ = ["cache_key", "main"]


def _output(argv):
    """The ``-o`` operand of a compile command, or None."""
    for index, arg in enumerate(argv[:-1]):
        if arg == "-o":
            return argv[index + 1]
    return None


def _source(argv):
    """The compiled source of a ``-c`` command: its last operand ending in a C++ suffix, or None."""
    if "-c" not in argv:
        return None
    sources = [arg for arg in argv[1:] if arg.endswith((".cpp", ".cc", ".cxx", ".c"))]
    return sources[-1] if len(sources) == 1 else None


def cache_key(argv, source):
    """SHA-256 of the command, the compiler, the source and the headers in its directory."""
    digest = hashlib.sha256("\0".join(argv).encode())
    compiler = shutil.which(argv[0])
    if compiler is None:
        return None
    stat = os.stat(os.path.realpath(compiler))
    digest.update(f"{os.path.realpath(compiler)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    source = Path(source).resolve()
    digest.update(source.read_bytes())
    for header in sorted(source.parent.glob("*.h")):
        digest.update(header.name.encode())
        digest.update(header.read_bytes())
    return digest.hexdigest()


def _cacheable(argv):
    output, source = _output(argv), _source(argv)
    if output is None or source is None or not output.endswith(".o"):
        return None
    source_path = Path(source).resolve()
    if not source_path.is_file() or Path.cwd() in source_path.parents:
        return None                              # the model's own files: never cached
    return output, source_path


def _reads_build_directory(depfile):
    """Whether the compile read a file of the current directory (cocotb's ``verilator.cpp``
    includes the model's ``Vtop.h``): such an object belongs to this build alone."""
    text = depfile.read_text().replace("\\\n", " ")
    _, _, dependencies = text.partition(":")
    cwd = Path.cwd().resolve()
    for dependency in dependencies.split():
        path = Path(dependency)
        if not path.is_absolute() or cwd in path.resolve().parents:
            return True
    return False


def _store(path, target):
    temporary = target.with_name(f"{target.name}.{os.getpid()}.part")
    shutil.copyfile(path, temporary)
    os.replace(temporary, target)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("usage: python -m dynsparse.sim.objcache COMPILER ARGS...", file=sys.stderr)
        return 2
    cacheable = _cacheable(argv)
    key = cacheable and cache_key(argv, cacheable[1])
    if not key:
        return subprocess.call(argv)
    output, _ = cacheable
    depfile = Path(output).with_suffix(".d")
    cache = Path(os.environ.get("DYNSPARSE_OBJCACHE", Path(__file__).resolve().parent.parent / "build" / "objcache"))
    cached_object, cached_deps = cache / f"{key}.o", cache / f"{key}.d"
    if cached_object.is_file() and cached_deps.is_file():
        shutil.copyfile(cached_object, output)
        shutil.copyfile(cached_deps, depfile)
        return 0
    code = subprocess.call(argv)
    if code == 0 and Path(output).is_file() and depfile.is_file() and not _reads_build_directory(depfile):
        cache.mkdir(parents=True, exist_ok=True)
        _store(depfile, cached_deps)
        _store(output, cached_object)
    return code


if __name__ == "__main__":
    sys.exit(main())
