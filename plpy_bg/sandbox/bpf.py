"""Classic BPF, as the kernel runs seccomp filters, to evaluate a filter a process loaded.

The supervisor records the programs a backend loads (its job filter, its
set_client_filter) and evaluates them for that backend's parallel workers,
which the postmaster forks without them.
"""
from __future__ import annotations

import struct

# return values (linux/seccomp.h), most restrictive first
RET_KILL_PROCESS = 0x80000000
RET_KILL_THREAD = 0x00000000
RET_TRAP = 0x00030000
RET_ERRNO = 0x00050000
RET_USER_NOTIF = 0x7FC00000
RET_TRACE = 0x7FF00000
RET_LOG = 0x7FFC0000
RET_ALLOW = 0x7FFF0000
ACTION_FULL = 0xFFFF0000
_ORDER = (RET_KILL_PROCESS, RET_KILL_THREAD, RET_TRAP, RET_ERRNO, RET_USER_NOTIF, RET_TRACE, RET_LOG, RET_ALLOW)
MAX_INSNS = 4096  # the kernel's BPF_MAXINSNS


class BadProgram(ValueError):
    pass


def seccomp_data(nr: int, arch: int, ip: int, args) -> bytes:
    return struct.pack("<iIQ6Q", nr, arch, ip, *args)


def decode(raw: bytes) -> list[tuple[int, int, int, int]]:
    if len(raw) % 8 or not 0 < len(raw) // 8 <= MAX_INSNS:
        raise BadProgram("a program is 1 to 4096 instructions of 8 bytes")
    return [struct.unpack_from("<HBBI", raw, i) for i in range(0, len(raw), 8)]


def run(prog: list[tuple[int, int, int, int]], data: bytes) -> int:
    """The value the program returns for `data` (a struct seccomp_data)."""
    a = x = 0
    mem = [0] * 16
    pc = 0
    m32 = 0xFFFFFFFF
    while 0 <= pc < len(prog):
        code, jt, jf, k = prog[pc]
        pc += 1
        cls = code & 0x07
        if cls == 0x00:  # LD
            mode = code & 0xE0
            if mode == 0x20:  # ABS, words only in seccomp
                if k % 4 or k + 4 > len(data):
                    raise BadProgram(f"load outside seccomp_data at {k}")
                a = struct.unpack_from("<I", data, k)[0]
            elif mode == 0x00:
                a = k
            elif mode == 0x60:
                a = mem[k & 15]
            elif mode == 0x80:
                a = len(data)
            else:
                raise BadProgram(f"unsupported load 0x{code:x}")
        elif cls == 0x01:  # LDX
            mode = code & 0xE0
            x = k if mode == 0x00 else mem[k & 15] if mode == 0x60 else len(data) if mode == 0x80 else None
            if x is None:
                raise BadProgram(f"unsupported ldx 0x{code:x}")
        elif cls == 0x02:
            mem[k & 15] = a
        elif cls == 0x03:
            mem[k & 15] = x
        elif cls == 0x04:  # ALU
            op, src = code & 0xF0, (x if code & 0x08 else k)
            if op in (0x30, 0x90) and src == 0:
                return RET_KILL_THREAD  # the kernel rejects a constant zero divisor; a run-time one ends the program
            a = {0x00: lambda: a + src, 0x10: lambda: a - src, 0x20: lambda: a * src,
                 0x30: lambda: a // src, 0x40: lambda: a | src, 0x50: lambda: a & src,
                 0x60: lambda: a << (src & 31), 0x70: lambda: a >> (src & 31), 0x80: lambda: -a,
                 0x90: lambda: a % src, 0xA0: lambda: a ^ src}.get(op, lambda: None)()
            if a is None:
                raise BadProgram(f"unsupported alu 0x{code:x}")
            a &= m32
        elif cls == 0x05:  # JMP
            op, src = code & 0xF0, (x if code & 0x08 else k)
            if op == 0x00:
                pc += k
                continue
            cond = {0x10: a == src, 0x20: a > src, 0x30: a >= src, 0x40: bool(a & src)}.get(op)
            if cond is None:
                raise BadProgram(f"unsupported jump 0x{code:x}")
            pc += jt if cond else jf
        elif cls == 0x06:  # RET
            return (a if code & 0x18 == 0x10 else k) & m32
        elif cls == 0x07:  # MISC
            if code & 0xF8 == 0x00:
                x = a
            else:
                a = x
    raise BadProgram("the program runs off its end")


def rank(ret: int) -> int:
    """Lower is more restrictive, as the kernel orders actions across stacked filters."""
    act = ret & ACTION_FULL
    return _ORDER.index(act) if act in _ORDER else 0
