"""Run a command under systemd's ``MemoryDenyWriteExecute=yes``, as systemd 252 applies it.

    python mdwe_exec.py PROGRAM [ARG...]

systemd (src/shared/seccomp-util.c, ``seccomp_memory_deny_write_execute``) installs a seccomp
filter that answers EPERM to ``mmap`` with both PROT_WRITE and PROT_EXEC, to ``mprotect`` and
``pkey_mprotect`` adding PROT_EXEC, and to ``shmat`` with SHM_EXEC. This script installs the
same filter (classic BPF, after PR_SET_NO_NEW_PRIVS, as an unprivileged process may) and
execs the command: the filter stays on across exec and in every child, as under systemd.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
EPERM = 1
PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000

# machine -> (AUDIT_ARCH_*, mmap, mprotect, pkey_mprotect, shmat)
ARCHES = {
    "x86_64": (0xC000003E, 9, 10, 329, 30),
    "aarch64": (0xC00000B7, 222, 226, 288, 196),
}

LD_W_ABS, JEQ_K, JSET_K, AND_K, RET_K = 0x20, 0x15, 0x45, 0x54, 0x06
OFF_NR, OFF_ARCH, OFF_ARG2 = 0, 4, 16 + 8 * 2  # struct seccomp_data; low word (little endian)


def program(machine: str) -> list[tuple[int, str | int, str | int, int]]:
    """Return the filter as (code, jt, jf, k) with jumps to labels."""
    arch, mmap_nr, mprotect_nr, pkey_nr, shmat_nr = ARCHES[machine]
    return [
        (LD_W_ABS, 0, 0, OFF_ARCH),
        (JEQ_K, 0, "allow", arch),
        (LD_W_ABS, 0, 0, OFF_NR),
        (JEQ_K, "mmap", 0, mmap_nr),
        (JEQ_K, "exec", 0, mprotect_nr),
        (JEQ_K, "exec", 0, pkey_nr),
        (JEQ_K, "shm", "allow", shmat_nr),
        ("mmap", LD_W_ABS, 0, 0, OFF_ARG2),
        (AND_K, 0, 0, PROT_WRITE | PROT_EXEC),
        (JEQ_K, "deny", "allow", PROT_WRITE | PROT_EXEC),
        ("exec", LD_W_ABS, 0, 0, OFF_ARG2),
        (JSET_K, "deny", "allow", PROT_EXEC),
        ("shm", LD_W_ABS, 0, 0, OFF_ARG2),
        (JSET_K, "deny", "allow", SHM_EXEC),
        ("allow", RET_K, 0, 0, SECCOMP_RET_ALLOW),
        ("deny", RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM),
    ]


def assemble(lines: list[tuple]) -> bytes:
    """Resolve labels into relative jumps; return the packed ``struct sock_filter`` array."""
    labels = {}
    plain = []
    for pc, line in enumerate(lines):
        if isinstance(line[0], str):
            labels[line[0]] = pc
            line = line[1:]
        plain.append(line)
    out = b""
    for pc, (code, jt, jf, k) in enumerate(plain):
        jt = labels[jt] - pc - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - pc - 1 if isinstance(jf, str) else jf
        out += struct.pack("=HBBI", code, jt, jf, k)
    return out


def install() -> None:
    """Install the filter on this process (and so on what it execs)."""
    machine = platform.machine()
    if machine not in ARCHES:
        sys.exit(f"mdwe_exec: no syscall numbers for {machine}")
    filters = assemble(program(machine))
    buf = ctypes.create_string_buffer(filters)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(filters) // 8, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong,
                           ctypes.c_ulong]
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0:
        sys.exit(f"mdwe_exec: PR_SET_NO_NEW_PRIVS: {os.strerror(ctypes.get_errno())}")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        sys.exit(f"mdwe_exec: PR_SET_SECCOMP: {os.strerror(ctypes.get_errno())}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    install()
    os.execvp(sys.argv[1], sys.argv[1:])
